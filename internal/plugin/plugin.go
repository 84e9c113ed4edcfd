// Package plugin is `kubectl cmk`: one command for one CustomerMasterKey or many selected by
// label, with a result table, server-side dry runs and waiting for the operator to finish.
package plugin

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/internal/scheme"
)

// Version is set at build time (-ldflags -X).
var Version = "dev"

// options are the flags every verb shares.
type options struct {
	config        *genericclioptions.ConfigFlags
	allNamespaces bool
	selector      string
	dryRun        bool
	wait          bool
	timeout       time.Duration
	parallel      int
	out, errOut   io.Writer

	// Filled by complete.
	client    client.WithWatch
	namespace string
}

// NewCommand builds `kubectl cmk` and its verbs.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &options{config: genericclioptions.NewConfigFlags(true), out: streams.Out, errOut: streams.ErrOut}
	root := &cobra.Command{
		Use:     "kubectl-cmk",
		Short:   "Manage KMS customer master keys (CustomerMasterKey resources), one or many at a time",
		Version: Version,
		Long: `kubectl cmk changes CustomerMasterKeys by name or by label selector, shows what changed,
and can wait until the operator has moved each key. Every verb takes NAME..., or -l SELECTOR.`,
		Example: `  # Schedule the deletion of every key of a team, then cancel it, waiting for the operator
  kubectl cmk schedule-deletion -l team=payments
  kubectl cmk cancel-deletion -l team=payments --wait

  # What would change, without changing anything
  kubectl cmk disable -l env=staging --dry-run

  # Bring your own key material
  kubectl cmk import-material own-key --material-file material.bin`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// Help reads "kubectl cmk", as the user types it.
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl cmk"},
	}
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	o.config.AddFlags(root.PersistentFlags())
	root.PersistentFlags().BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "Select keys in every namespace.")

	for _, v := range verbs {
		root.AddCommand(o.verbCommand(v))
	}
	root.AddCommand(o.statusCommand(), o.importCommand(), o.usageCommand())
	return root
}

// complete builds the client and works out the namespace.
func (o *options) complete() error {
	cfg, err := o.config.ToRESTConfig()
	if err != nil {
		return err
	}
	// Bulk work: many small patches in parallel; the apiserver's own fairness still applies.
	cfg.QPS, cfg.Burst = 200, 400
	if o.client, err = client.NewWithWatch(cfg, client.Options{Scheme: scheme.Scheme}); err != nil {
		return err
	}
	if o.namespace, _, err = o.config.ToRawKubeConfigLoader().Namespace(); err != nil {
		return err
	}
	if o.allNamespaces {
		o.namespace = ""
	}
	return nil
}

// addSelectionFlags adds the flags of verbs that select keys.
func (o *options) addSelectionFlags(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.selector, "selector", "l", "", "Label selector, e.g. -l team=payments, instead of names.")
}

func (o *options) addChangeFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&o.dryRun, "dry-run", false, "Send the patches as a server-side dry run: nothing changes, the table shows what would.")
	cmd.Flags().BoolVar(&o.wait, "wait", false, "Wait until the operator has moved each key to its new phase.")
	cmd.Flags().DurationVar(&o.timeout, "timeout", 5*time.Minute, "How long --wait waits.")
	cmd.Flags().IntVar(&o.parallel, "parallel", 16, "How many keys are patched at once.")
}

func validateSelection(o *options, names []string) error {
	switch {
	case len(names) == 0 && o.selector == "":
		return fmt.Errorf("name one or more keys, or select them with -l/--selector")
	case len(names) > 0 && o.selector != "":
		return fmt.Errorf("name keys or select them with -l/--selector, not both")
	}
	return nil
}
