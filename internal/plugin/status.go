package plugin

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

func (o *options) statusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "status [NAME... | -l SELECTOR]",
		Aliases: []string{"get"},
		Short:   "Show keys with their phase, deletion date, and what each is waiting for",
		Example: `  kubectl cmk status -l team=payments
  kubectl cmk get -A`,
		RunE: func(cmd *cobra.Command, names []string) error {
			if len(names) > 0 && o.selector != "" {
				return validateSelection(o, names)
			}
			if err := o.complete(); err != nil {
				return err
			}
			return o.status(cmd.Context(), names)
		},
	}
	o.addSelectionFlags(cmd)
	return cmd
}

func (o *options) status(ctx context.Context, names []string) error {
	var keys []v1alpha1.CustomerMasterKey
	if len(names) == 0 {
		list, err := o.list(ctx)
		if err != nil {
			return err
		}
		keys = list.Items
	}
	var missing int
	for _, name := range names {
		c := v1alpha1.CustomerMasterKey{}
		if err := o.client.Get(ctx, keyIn(o.namespaceOrDefault(), name), &c); err != nil {
			fmt.Fprintf(o.errOut, "%s/%s: %s\n", o.namespaceOrDefault(), name, notFound(err))
			missing++
			continue
		}
		keys = append(keys, c)
	}
	if len(keys) == 0 && missing == 0 {
		fmt.Fprintf(o.errOut, "No CustomerMasterKeys found in %s.\n", o.where())
		return nil
	}
	w := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAMESPACE\tNAME\tPHASE\tPOLICY\tDELETION-DATE\tDELETES-IN\tROTATION\tWAITING-FOR")
	now := time.Now()
	for _, c := range keys {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Namespace, c.Name, orDash(string(c.Status.Phase)), policy(&c),
			date(c.Status.DeletionDate), timeLeft(c.Status.DeletionDate, now), rotation(c.Status.Rotation), waitingFor(&c))
	}
	_ = w.Flush()
	if missing > 0 {
		return fmt.Errorf("%d of %d keys not found", missing, len(names))
	}
	return nil
}

// policy is how the operator treats the key: its managementPolicy, and the guard rails on it.
func policy(c *v1alpha1.CustomerMasterKey) string {
	p := string(c.Spec.ManagementPolicy)
	if p == "" {
		p = string(v1alpha1.ManagementPolicyManage)
	}
	if c.Spec.DeletionProtection {
		p += ",protected"
	}
	if c.Annotations[v1alpha1.PausedAnnotation] == "true" {
		p += ",paused"
	}
	return p
}

// waitingFor says in a few words what a key needs before it is as its spec asks, from its
// conditions; and, for a key waiting for material, what it needs before it can be used, which
// Ready does not say (the spec gives no material, so the key is as it asks).
func waitingFor(c *v1alpha1.CustomerMasterKey) string {
	if c.Status.ObservedGeneration < c.Generation {
		return "the operator to act on the latest change"
	}
	synced := meta.FindStatusCondition(c.Status.Conditions, v1alpha1.ConditionSynced)
	if synced != nil && synced.Status == metav1.ConditionFalse {
		return synced.Reason + ": " + synced.Message
	}
	ready := meta.FindStatusCondition(c.Status.Conditions, v1alpha1.ConditionReady)
	switch {
	case ready == nil:
		return "the operator to see it"
	case ready.Status == metav1.ConditionTrue && c.Status.Phase != v1alpha1.PhasePendingImport:
		return "-"
	}
	return ready.Reason + ": " + ready.Message
}

func (o *options) where() string {
	if o.namespace == "" {
		return "any namespace"
	}
	return "namespace " + o.namespace
}

func date(t *metav1.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// timeLeft is the time until a key's deletion date, in days and hours; "due" once it passed
// (the KMS deletes the key shortly after).
func timeLeft(at *metav1.Time, now time.Time) string {
	if at == nil {
		return "-"
	}
	left := at.Sub(now)
	if left <= 0 {
		return "due"
	}
	day := 24 * time.Hour
	return fmt.Sprintf("%dd%dh", left/day, left%day/time.Hour)
}

// rotation sums up a key's automatic rotation as the KMS reports it.
func rotation(r *v1alpha1.RotationStatus) string {
	switch {
	case r == nil:
		return "-"
	case !r.Enabled:
		return "off"
	case r.LastRotationTime == nil:
		return fmt.Sprintf("every %dd", r.IntervalDays)
	}
	return fmt.Sprintf("every %dd, %d so far, last %s", r.IntervalDays, r.Rotations, date(r.LastRotationTime))
}
