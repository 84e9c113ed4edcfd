package plugin

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// verb is one change kubectl cmk makes to a selection of keys.
type verb struct {
	name, short, example string
	// plan decides, for one key as it is now, the spec patch to send, or why the key is skipped,
	// and which phases mean the operator has carried the change out. Deleted keys never reach
	// it: no verb can do anything for them.
	plan func(c *v1alpha1.CustomerMasterKey, o *verbFlags) step
}

// step is what a verb does to one key: a spec patch, and annotations to set with it.
type step struct {
	patch    map[string]any
	annotate map[string]any
	skip     string
	want     []v1alpha1.Phase
}

// verbFlags are the flags of one verb beyond the shared ones.
type verbFlags struct {
	pendingDays int32
	// allowInUse goes ahead with keys in use, setting the override annotation in the same patch.
	allowInUse bool
}

// inUse is why a key in use is skipped, or "" when it is not in use, the resource carries the
// override, or the override was asked for (then set in the patch).
func inUse(c *v1alpha1.CustomerMasterKey, f *verbFlags) (string, map[string]any) {
	u := c.Status.Usage
	switch {
	case u == nil || u.Consumers == 0 || c.Annotations[v1alpha1.AllowWhileInUseAnnotation] == "true":
		return "", nil
	case f.allowInUse:
		return "", map[string]any{v1alpha1.AllowWhileInUseAnnotation: "true"}
	}
	return fmt.Sprintf("in use by %s: remove them first, or --allow-while-in-use", consumers(u)), nil
}

// dropOverride takes the override off a key being enabled again or kept: it was for the change
// those undo, and left on, a later bulk change would stop the key in use without a word.
func dropOverride(c *v1alpha1.CustomerMasterKey) map[string]any {
	if _, ok := c.Annotations[v1alpha1.AllowWhileInUseAnnotation]; !ok {
		return nil
	}
	return map[string]any{v1alpha1.AllowWhileInUseAnnotation: nil}
}

// consumers names the consumers of a key as status.usage lists them.
func consumers(u *v1alpha1.Usage) string {
	s := strings.Join(u.Refs, ", ")
	if more := int(u.Consumers) - len(u.Refs); more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}

var (
	settledAfterCancel = []v1alpha1.Phase{v1alpha1.PhaseDisabled, v1alpha1.PhasePendingImport}
)

var verbs = []verb{
	{
		name:  "cancel-deletion",
		short: "Cancel the scheduled deletion of keys; they come back Disabled, or PendingImport without material",
		example: `  kubectl cmk cancel-deletion app-key
  kubectl cmk cancel-deletion -l team=payments --wait`,
		plan: func(c *v1alpha1.CustomerMasterKey, _ *verbFlags) step {
			switch {
			case !c.Spec.DeletionScheduled:
				return step{skip: "not pending deletion"}
			}
			return step{patch: spec("deletionScheduled", false), annotate: dropOverride(c), want: settledAfterCancel}
		},
	},
	{
		name:  "schedule-deletion",
		short: "Disable keys and schedule their deletion after --pending-days",
		example: `  kubectl cmk schedule-deletion app-key --pending-days 30
  kubectl cmk schedule-deletion -l env=staging --dry-run`,
		plan: func(c *v1alpha1.CustomerMasterKey, f *verbFlags) step {
			switch {
			case c.Spec.DeletionScheduled:
				return step{skip: "already scheduled for deletion"}
			case c.Spec.DeletionProtection:
				return step{skip: "deletionProtection: clear spec.deletionProtection first"}
			}
			why, annotate := inUse(c, f)
			if why != "" {
				return step{skip: why}
			}
			// One patch, as the CRD requires: a key pending deletion is never enabled.
			p := map[string]any{"enabled": false, "deletionScheduled": true}
			if f.pendingDays > 0 {
				p["pendingDays"] = f.pendingDays
			}
			return step{patch: map[string]any{"spec": p}, annotate: annotate, want: []v1alpha1.Phase{v1alpha1.PhasePendingDeletion}}
		},
	},
	{
		name:    "enable",
		short:   "Enable keys (a key without material becomes Enabled once its material is imported)",
		example: `  kubectl cmk enable -l team=payments --wait`,
		plan: func(c *v1alpha1.CustomerMasterKey, _ *verbFlags) step {
			switch {
			case c.Spec.DeletionScheduled:
				return step{skip: "pending deletion: cancel the deletion first"}
			case c.Spec.Enabled:
				return step{skip: "already enabled"}
			}
			want := []v1alpha1.Phase{v1alpha1.PhaseEnabled}
			if c.Status.Phase == v1alpha1.PhasePendingImport {
				want = []v1alpha1.Phase{v1alpha1.PhasePendingImport}
			}
			return step{patch: spec("enabled", true), annotate: dropOverride(c), want: want}
		},
	},
	{
		name:    "disable",
		short:   "Disable keys",
		example: `  kubectl cmk disable app-key other-key`,
		plan: func(c *v1alpha1.CustomerMasterKey, f *verbFlags) step {
			if !c.Spec.Enabled {
				return step{skip: "already disabled"}
			}
			why, annotate := inUse(c, f)
			if why != "" {
				return step{skip: why}
			}
			return step{patch: spec("enabled", false), annotate: annotate, want: settledAfterCancel}
		},
	},
}

func spec(field string, value any) map[string]any {
	return map[string]any{"spec": map[string]any{field: value}}
}

func (o *options) verbCommand(v verb) *cobra.Command {
	f := &verbFlags{}
	cmd := &cobra.Command{
		Use:     v.name + " (NAME... | -l SELECTOR)",
		Short:   v.short,
		Example: v.example,
		RunE: func(cmd *cobra.Command, names []string) error {
			if err := validateSelection(o, names); err != nil {
				return err
			}
			if err := o.complete(); err != nil {
				return err
			}
			return o.change(cmd.Context(), v, f, names)
		},
	}
	o.addSelectionFlags(cmd)
	o.addChangeFlags(cmd)
	if v.name == "schedule-deletion" {
		cmd.Flags().Int32Var(&f.pendingDays, "pending-days", 0, "Days until the KMS deletes the keys, 7 to 1096 (default: each key's spec.pendingDays).")
	}
	if v.name == "schedule-deletion" || v.name == "disable" {
		cmd.Flags().BoolVar(&f.allowInUse, "allow-while-in-use", false,
			"Change keys in use too (status.usage counts consumers), annotating each "+v1alpha1.AllowWhileInUseAnnotation+"=true; "+
				"data they protect may become unreadable. Without it such keys are skipped.")
	}
	return cmd
}
