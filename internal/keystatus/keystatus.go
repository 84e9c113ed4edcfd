// Package keystatus turns what one reconcile of a CustomerMasterKey observed and did into its
// status: the key's facts (phase, deletion date and window, material expiry, rotation, tags),
// the conditions with their reasons, and the events that report a new failure or a deleted
// key. It is pure: no client, no clock of its own, so every reason is a table test. It is the
// one place that decides conditions; docs/api.md lists them and docs/gitops.md says how GitOps
// engines read them.
package keystatus

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// Input is what a reconcile observed and did.
type Input struct {
	// Planner is the key as last read (Key; nil when there is none, or it could not be read)
	// with the spec and what status recorded, as the planner saw them before this record.
	Planner planner.Input
	// Name and Namespace name the resource, for messages that say what to run.
	Name, Namespace string
	Generation      int64
	// Before is the status as stored; Status is as the reconcile left it (a key ID recorded,
	// a window, import parameters).
	Before, Status v1alpha1.CustomerMasterKeyStatus
	// Failure is what stopped the reconcile short of the spec; nil when nothing did.
	Failure *Failure
	// Cut: the reconcile made as many calls as it may and still has some to make.
	Cut bool
	// Paused: the resource carries v1alpha1.PausedAnnotation; nothing was done or read.
	Paused bool
}

// Event is something to report on the resource.
type Event struct {
	Type, Reason, Action, Message string
}

// Compute returns the status the reconcile leaves and the events that report it.
func Compute(in Input) (v1alpha1.CustomerMasterKeyStatus, []Event) {
	st := *in.Status.DeepCopy()
	f, deleting := in.Failure, in.Planner.Deleting
	set := func(typ string, status metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg,
			ObservedGeneration: in.Generation, LastTransitionTime: metav1.NewTime(in.Planner.Now)})
	}
	if in.Paused {
		// Nothing was read: status keeps what it knew, and says why nothing moves.
		set(v1alpha1.ConditionSynced, metav1.ConditionFalse, v1alpha1.ReasonReconcilePaused,
			"The operator makes no KMS call and changes nothing for this resource while it carries "+
				v1alpha1.PausedAnnotation+": \"true\"; remove the annotation to apply the spec")
		return st, events(in.Before, st)
	}
	if f == nil || in.Planner.Key != nil {
		// A failed read says nothing about the key: status keeps what it knew.
		Record(&st, in.Planner)
	}
	show := func(typ string, on bool, reason, msg string) {
		if on {
			set(typ, metav1.ConditionTrue, reason, msg)
		} else {
			meta.RemoveStatusCondition(&st.Conditions, typ)
		}
	}
	// unsettled is for a reconcile that stopped short: Ready keeps what was last known, but
	// never says True of a key the KMS, as just read, shows other than the spec asks (a key
	// disabled outside whose Enable keeps failing).
	unsettled := func() {
		if in.Planner.Key == nil {
			return
		}
		p := in.Planner
		p.KeyID, p.PendingDays = st.KeyID, st.PendingDays
		if v := Readiness(p); v.Class != Settled {
			set(v1alpha1.ConditionReady, metav1.ConditionFalse, v.Reason, v.Message)
		}
	}
	switch {
	case f != nil && f.Kind == Blocking:
		msg := f.Message
		if deleting && !f.Hold {
			msg = fmt.Sprintf("Applying deletionPolicy failed: %s. Fix that, or let the resource go without applying deletionPolicy "+
				"to its key: kubectl patch cmk %s -n %s --type merge -p '{\"metadata\":{\"finalizers\":null}}'", f.Message, in.Name, in.Namespace)
		}
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, f.Reason, msg)
		set(v1alpha1.ConditionSynced, metav1.ConditionFalse, f.Reason, msg)
		show(v1alpha1.ConditionStalled, true, f.Reason, msg)
		show(v1alpha1.ConditionReconciling, false, "", "")
		st.ObservedGeneration = in.Generation
	case f != nil && (f.Kind == Transient || f.Kind == Unavailable):
		// Ready keeps what was last known: a failed call says nothing new about the key.
		msg := f.Message
		if f.Kind == Transient && deleting {
			msg = fmt.Sprintf("%s key failed, retrying with backoff: applying deletionPolicy: %v", f.Doing, f.Err)
		}
		set(v1alpha1.ConditionSynced, metav1.ConditionFalse, f.Reason, msg)
		show(v1alpha1.ConditionReconciling, true, f.Reason, msg)
		show(v1alpha1.ConditionStalled, false, "", "")
		unsettled()
	case deleting:
		// A deletion under way: the facts alone.
	case f != nil:
		// A lost race: the next attempt follows at once, from what the other writer left.
		unsettled()
	case in.Cut:
		show(v1alpha1.ConditionReconciling, true, movingToSpec.Reason, movingToSpec.Message)
		show(v1alpha1.ConditionStalled, false, "", "")
		unsettled()
	default:
		p := in.Planner
		p.KeyID, p.PendingDays = st.KeyID, st.PendingDays
		v := Readiness(p)
		ready := metav1.ConditionFalse
		if v.Class == Settled {
			ready = metav1.ConditionTrue
		}
		set(v1alpha1.ConditionReady, ready, v.Reason, v.Message)
		set(v1alpha1.ConditionSynced, metav1.ConditionTrue, v1alpha1.ReasonReconcileSuccess, "The last reconcile reached the KMS without error")
		show(v1alpha1.ConditionReconciling, v.Class == Moving, v.Reason, v.Message)
		show(v1alpha1.ConditionStalled, v.Class == Stalled, v.Reason, v.Message)
		st.ObservedGeneration = in.Generation
	}
	return st, events(in.Before, st)
}

// events reports what the new status says happened: a failure the stored status did not
// already report with the same reason and message (so retries, resyncs and restarts do not
// repeat it), and a key found deleted: expected at the end of a scheduled deletion, a warning
// when it vanished from any other state.
func events(before, after v1alpha1.CustomerMasterKeyStatus) []Event {
	var out []Event
	if now := meta.FindStatusCondition(after.Conditions, v1alpha1.ConditionSynced); now != nil && now.Status != metav1.ConditionTrue {
		was := meta.FindStatusCondition(before.Conditions, v1alpha1.ConditionSynced)
		if was == nil || was.Status != now.Status || was.Reason != now.Reason || was.Message != now.Message {
			typ := "Warning"
			if now.Reason == v1alpha1.ReasonReconcilePaused {
				typ = "Normal" // asked for, not a failure
			}
			out = append(out, Event{Type: typ, Reason: WarningReason(now.Reason), Action: "Reconcile", Message: now.Message})
		}
	}
	if last := before.Phase; last != "" && last != v1alpha1.PhaseDeleted && after.Phase == v1alpha1.PhaseDeleted {
		typ := "Normal"
		if last != v1alpha1.PhasePendingDeletion {
			typ = "Warning"
		}
		out = append(out, Event{Type: typ, Reason: v1alpha1.EventDeleted, Action: "Observe",
			Message: fmt.Sprintf("Key %s is deleted in the KMS (it was %s); it is never recreated", after.KeyID, last)})
	}
	return out
}
