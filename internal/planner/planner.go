// Package planner decides, from what the user asks for and what the KMS reports, the one next
// thing to do to a key. It is pure: no clients, no clock of its own, so every state × spec
// combination is a table test.
package planner

import (
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Action is one call to make to the KMS, or none.
type Action string

// Actions.
const (
	// None: the key matches the spec, or waits for something no call can bring about.
	None             Action = "None"
	Create           Action = "Create"
	Enable           Action = "Enable"
	Disable          Action = "Disable"
	ScheduleDeletion Action = "ScheduleDeletion"
	CancelDeletion   Action = "CancelDeletion"
	SetDescription   Action = "SetDescription"
	// SetRotation turns automatic rotation on or off, or changes its interval.
	SetRotation Action = "SetRotation"
	// SetTags makes the key's tags those of the spec.
	SetTags Action = "SetTags"
	// IssueImportParameters publishes fresh parameters to wrap material with.
	IssueImportParameters Action = "IssueImportParameters"
	// ImportMaterial imports the material spec.keyMaterial points at.
	ImportMaterial Action = "ImportMaterial"
	// Release: the resource is being deleted and its key needs nothing more; drop the finalizer.
	Release Action = "Release"
)

// Short waits for states the KMS leaves on its own.
const (
	// CreatingRecheck is how soon a key still being created is looked at again.
	CreatingRecheck = 5 * time.Second
	// OverdueRecheck is how soon a key is first looked at again when the KMS is late to act on
	// it (a deletion date or a material expiry passed); later looks wait as long as the KMS has
	// been late, so they thin out the longer it takes (Huawei removes expired material up to a
	// day late).
	OverdueRecheck = time.Second
	// ImportParametersRefresh is how long before they expire import parameters are replaced,
	// so a user always has time to wrap material with the published ones.
	ImportParametersRefresh = time.Hour
)

// Input is everything a decision depends on.
type Input struct {
	Spec v1alpha1.CustomerMasterKeySpec
	// KeyID is the ID recorded in status; empty until the key is created.
	KeyID string
	// Key is what the KMS reports; nil when it has no key with KeyID (or KeyID is empty).
	Key *kms.Key
	// Deleting is true once the resource has a deletion timestamp.
	Deleting bool
	// ImportParametersExpireAt is when the import parameters in status expire; zero when none
	// are published.
	ImportParametersExpireAt time.Time
	// PendingDays is the deletion window status records for the key's current deletion; zero
	// when none is recorded.
	PendingDays int32
	// DeletionDate is the deletion date status records; zero when none is.
	DeletionDate time.Time
	// LastPhase is the phase status last reported; empty before the key was first seen.
	LastPhase v1alpha1.Phase
	// Adopted is true when the resource manages a key it did not create (spec.keyID).
	Adopted bool
	// InUse is true while something depends on the key (status.usage counts consumers) and the
	// resource does not carry kms.cmk.io/allow-while-in-use: the key is neither disabled nor
	// scheduled for deletion.
	InUse bool
	Now   time.Time
}

// Decision is the next action and, when none is due, when to look again.
type Decision struct {
	Action Action
	// RecheckAt is when the key should be looked at again because the KMS changes it by then
	// (a deletion date, a key being created); zero means the slow resync is enough.
	RecheckAt time.Time
	// Hold is the reason of a guard rail that keeps the planner from the call the spec asks for
	// (v1alpha1.ReasonDeletionProtected, ReasonKeyInUse); empty when none does. The key waits
	// for a person, or for its consumers to go.
	Hold string
}

// Next returns the one next action for a key.
func Next(in Input) Decision {
	if in.Spec.ManagementPolicy == v1alpha1.ManagementPolicyObserve {
		return nextObserving(in)
	}
	if in.Deleting {
		return nextOnDelete(in)
	}
	if in.Key == nil {
		if in.KeyID == "" && !in.Spec.DeletionScheduled {
			return Decision{Action: Create}
		}
		// Either the spec asks for a key's deletion before it exists, or the KMS lost the key
		// we made. Neither is fixed by creating one: a replaced key would silently orphan
		// everything encrypted with the old one.
		return Decision{Action: None}
	}
	k := in.Key
	switch k.State {
	case kms.StateDeleted:
		return Decision{Action: None}
	case kms.StateCreating:
		return Decision{Action: None, RecheckAt: in.Now.Add(CreatingRecheck)}
	case kms.StatePendingDeletion:
		if !pendingAsAsked(in, in.Spec.DeletionScheduled) {
			return Decision{Action: CancelDeletion}
		}
		return Decision{Action: None, RecheckAt: recheck(k.DeletionDate, in.Now)}
	}
	// Enabled, Disabled or PendingImport.
	if in.Spec.DeletionScheduled {
		if in.Spec.DeletionProtection {
			// The apiserver refuses this spec; one stored before the rule was (an upgrade)
			// is held here all the same.
			return Decision{Action: None, Hold: v1alpha1.ReasonDeletionProtected}
		}
		if in.InUse {
			return Decision{Action: None, Hold: v1alpha1.ReasonKeyInUse}
		}
		return Decision{Action: ScheduleDeletion}
	}
	if k.State == kms.StatePendingImport && in.Spec.Origin == v1alpha1.OriginExternal {
		if d, ok := nextImport(in); ok {
			return d
		}
	}
	switch {
	case Rotates(in.Spec, k):
		// Before a Disable the spec may also ask for: rotation changes only on an Enabled key.
		return Decision{Action: SetRotation}
	case Retags(in.Spec, k):
		return Decision{Action: SetTags}
	case k.State == kms.StateEnabled && !in.Spec.Enabled && !in.InUse:
		return Decision{Action: Disable}
	case k.State == kms.StateDisabled && in.Spec.Enabled:
		return Decision{Action: Enable}
	case Describes(in.Spec, k):
		return Decision{Action: SetDescription}
	case k.State == kms.StateEnabled && !in.Spec.Enabled:
		// In use: the rest of the spec applied, the disable waits for the last consumer.
		return Decision{Action: None, Hold: v1alpha1.ReasonKeyInUse}
	case k.State == kms.StatePendingImport && !in.ImportParametersExpireAt.IsZero():
		// Waiting for the user to bring material; the parameters are replaced before they expire.
		return Decision{Action: None, RecheckAt: in.ImportParametersExpireAt.Add(-ImportParametersRefresh)}
	}
	// Matches the spec; imported material that expires is looked at again then.
	return Decision{Action: None, RecheckAt: recheck(k.MaterialExpiresAt, in.Now)}
}

// WantRotation is the rotation the spec asks for: off without spec.rotation, and the
// default interval when none is given.
func WantRotation(spec v1alpha1.CustomerMasterKeySpec) (enabled bool, intervalDays int) {
	if spec.Rotation == nil || !spec.Rotation.Enabled {
		return false, 0
	}
	if spec.Rotation.IntervalDays == 0 {
		return true, kms.DefaultRotationDays
	}
	return true, int(spec.Rotation.IntervalDays)
}

// Rotates reports whether the key's rotation must change to the spec's. Only an Enabled key's
// rotation is changed: Huawei's console guide makes an enabled key the condition for turning
// rotation on or off ("Enabling Key Rotation", prerequisites), and its API reference names no
// answer for other states. A key whose rotation was not read (k.Rotation nil) is left alone.
func Rotates(spec v1alpha1.CustomerMasterKeySpec, k *kms.Key) bool {
	return k.State == kms.StateEnabled && RotationDiffers(spec, k.Rotation)
}

// RotationDiffers reports whether a rotation that was read differs from the spec's.
func RotationDiffers(spec v1alpha1.CustomerMasterKeySpec, rot *kms.Rotation) bool {
	if rot == nil {
		return false
	}
	enabled, days := WantRotation(spec)
	return enabled != rot.Enabled || (enabled && days != rot.IntervalDays)
}

// Retags reports whether the key's tags must change to the spec's. Tags are changed while the
// key can be used or waits for material, not while its deletion is pending.
func Retags(spec v1alpha1.CustomerMasterKeySpec, k *kms.Key) bool {
	if k.Tags == nil {
		return false
	}
	switch k.State {
	case kms.StateEnabled, kms.StateDisabled, kms.StatePendingImport:
	default:
		return false
	}
	return !maps.Equal(k.Tags, SpecTags(spec))
}

// SpecTags are the spec's tags as the KMS takes them.
func SpecTags(spec v1alpha1.CustomerMasterKeySpec) map[string]string {
	tags := make(map[string]string, len(spec.Tags))
	for k, v := range spec.Tags {
		tags[k] = string(v)
	}
	return tags
}

// WindowVerdict says what to do with the date of a deletion the spec asks to keep.
type WindowVerdict int

// Window verdicts.
const (
	// Keep: the deletion follows the spec's pendingDays (status records it).
	Keep WindowVerdict = iota
	// Accept: a key adopted while it was already pending deletion, scheduled outside
	// Kubernetes, or one whose date is the spec's window from about now (a schedule whose
	// status write was lost); its date stands, and the spec's pendingDays is recorded as its
	// window.
	Accept
	// Reschedule: the deletion was scheduled with another window than the spec's, or with one
	// nobody recorded and a date earlier than the spec's window from now (a deletion scheduled
	// in the console, a key scheduled before windows were recorded): cancel it and schedule it
	// again, so the key is never deleted earlier than the spec asks. The new date is only ever
	// later.
	Reschedule
)

// Window judges the date of a key pending deletion while the spec asks for the deletion:
// whether the date follows the spec's pendingDays (docs/lifecycle.md, "Deletion dates").
func Window(in Input) WindowVerdict {
	switch {
	case in.PendingDays != 0 && in.Key != nil && in.Key.DeletionDate.Before(in.DeletionDate):
		// Moved earlier than the date recorded, by someone else: the recorded window no
		// longer holds. (Status keeps whole seconds, so the KMS's date is never before the
		// one recorded from it.)
		return Reschedule
	case in.PendingDays == in.Spec.PendingDays:
		return Keep
	case in.PendingDays != 0:
		// pendingDays changed while the deletion was canceled and scheduled again, in edits
		// the operator may have seen as one.
		return Reschedule
	case in.LastPhase == "" && in.Adopted:
		// Pending before the operator ever saw the key. Only then: a status that reports the
		// key pending with no window may have been written by a reconcile that failed halfway
		// through rescheduling, and accepting it would keep the early date.
		return Accept
	case in.Key != nil && !in.Now.IsZero() && freshSchedule(in.Key.DeletionDate, in.Now, in.Spec.PendingDays):
		// No window recorded, but the date is the spec's window from about now: a deletion
		// scheduled a moment ago whose status write was lost (a crash, a change of leader).
		// Scheduling it again would move the date by that moment only, for a cancel and a
		// second schedule; the date stands, recorded with the spec's window.
		return Accept
	}
	return Reschedule
}

// freshSchedule reports whether a deletion date is the window of pendingDays from now, give or
// take FreshSchedule: earlier by the time since a schedule made a moment ago, or a little later
// by the clocks of the KMS and the operator; a date further off was scheduled otherwise (a
// console, another window) or rounded by the KMS, and is scheduled again as before.
func freshSchedule(date, now time.Time, pendingDays int32) bool {
	want := now.Add(time.Duration(pendingDays) * 24 * time.Hour)
	return !date.Before(want.Add(-FreshSchedule)) && !date.After(want.Add(FreshSchedule))
}

// FreshSchedule is how much earlier than the spec's window from now an unrecorded deletion
// date may be and still be taken as the operator's own, just made: the time between a
// schedule call and its lost status write, with room for a change of leader.
const FreshSchedule = 10 * time.Minute

// Describes reports whether the key's description must change to the spec's. An empty one
// leaves the key's as it is, so adopting a key does not wipe what it says.
func Describes(spec v1alpha1.CustomerMasterKeySpec, k *kms.Key) bool {
	return spec.Description != "" && k.Description != spec.Description
}

// Mismatch says how a key differs from the spec in what cannot change (key spec, usage,
// origin), in words for a condition; empty when it does not. An adopted key must be declared
// as it is.
func Mismatch(spec v1alpha1.CustomerMasterKeySpec, k *kms.Key) string {
	var diffs []string
	check := func(field, want, got string) {
		if got != "" && got != want {
			diffs = append(diffs, fmt.Sprintf("%s is %s, not %s", field, got, want))
		}
	}
	check("keySpec", string(spec.KeySpec), k.KeySpec)
	check("keyUsage", string(spec.KeyUsage), k.KeyUsage)
	check("origin", string(spec.Origin), k.Origin)
	if len(diffs) == 0 {
		return ""
	}
	return fmt.Sprintf("Key %s does not match the spec: %s. Nothing is done to it until it does: "+
		"create the CustomerMasterKey again with those values", k.ID, strings.Join(diffs, ", "))
}

// nextImport moves an External key without material toward having it: import parameters are
// always published (also after material expired), and the material the spec points at is
// imported. Parameters about to expire are replaced only when no import is pending: replacing
// them would void the token of material the user has just wrapped (the reconciler replaces
// them itself when such an import is refused).
func nextImport(in Input) (Decision, bool) {
	switch {
	case in.ImportParametersExpireAt.IsZero():
		return Decision{Action: IssueImportParameters}, true
	case in.Spec.KeyMaterial != nil:
		return Decision{Action: ImportMaterial}, true
	case ImportParametersDue(in.ImportParametersExpireAt, in.Now):
		return Decision{Action: IssueImportParameters}, true
	}
	return Decision{}, false
}

// ImportParametersDue reports whether published parameters expiring at expireAt should be
// replaced now, so a user always has time to wrap material with them.
func ImportParametersDue(expireAt, now time.Time) bool {
	return expireAt.IsZero() || !now.Before(expireAt.Add(-ImportParametersRefresh))
}

func nextOnDelete(in Input) Decision {
	if in.Key == nil {
		return Decision{Action: Release}
	}
	switch {
	case in.Key.State == kms.StateDeleted:
		return Decision{Action: Release}
	case in.Key.State == kms.StateCreating:
		return Decision{Action: None, RecheckAt: in.Now.Add(CreatingRecheck)}
	case in.Spec.DeletionProtection && wantsDeletion(in.Spec) && in.Key.State == kms.StatePendingDeletion:
		// A deletion scheduled in a console, or one the last spec canceled before the
		// resource was deleted: the protected spec asks for none, so it is canceled first.
		return Decision{Action: CancelDeletion}
	case in.Spec.DeletionProtection && wantsDeletion(in.Spec):
		// deletionPolicy Delete asks for the key's deletion, and the protection forbids it:
		// the resource waits, Terminating, until the protection is cleared.
		return Decision{Action: None, Hold: v1alpha1.ReasonDeletionProtected}
	case in.InUse && wantsDeletion(in.Spec) && in.Key.State != kms.StatePendingDeletion:
		// The same for a key in use: the resource waits until the last consumer is gone.
		return Decision{Action: None, Hold: v1alpha1.ReasonKeyInUse}
	}
	if in.Key.State == kms.StatePendingDeletion {
		if !pendingAsAsked(in, wantsDeletion(in.Spec)) {
			// A cancel not acted on yet, or another window: carried out before the resource
			// goes, so deleting it never deletes the key earlier than the spec asked.
			return Decision{Action: CancelDeletion}
		}
		// Going as asked: the resource does not wait out the deletion window.
		return Decision{Action: Release}
	}
	if wantsDeletion(in.Spec) {
		return Decision{Action: ScheduleDeletion}
	}
	return Decision{Action: Release}
}

// nextObserving is the planner of managementPolicy Observe: never a call that changes the key,
// and a resource being deleted goes at once, leaving the key as it is. The key is looked at
// again when the KMS changes it by itself.
func nextObserving(in Input) Decision {
	switch {
	case in.Deleting:
		return Decision{Action: Release}
	case in.Key == nil:
		return Decision{Action: None}
	case in.Key.State == kms.StatePendingDeletion:
		return Decision{Action: None, RecheckAt: recheck(in.Key.DeletionDate, in.Now)}
	}
	return Decision{Action: None, RecheckAt: recheck(in.Key.MaterialExpiresAt, in.Now)}
}

// pendingAsAsked says whether a key pending deletion may stay so: the deletion is asked for,
// and its date follows the spec's window. Otherwise it is canceled, and scheduled again if
// asked for: rescheduling goes through Disabled, since the KMS only schedules a key that is
// not pending deletion.
func pendingAsAsked(in Input, asked bool) bool {
	return asked && Window(in) != Reschedule
}

// wantsDeletion says whether deleting the resource leaves its key scheduled for deletion:
// deletionPolicy Delete asks for it, and so does a spec that asked for the deletion itself
// (the resource goes; the deletion it asked for stands, whatever the policy).
func wantsDeletion(spec v1alpha1.CustomerMasterKeySpec) bool {
	return spec.DeletionPolicy == v1alpha1.DeletionPolicyDelete || spec.DeletionScheduled
}

// recheck is when to look again at a key the KMS changes by itself at t (zero: never). Once t
// has passed and the KMS has not acted, the wait grows with how late it is, from
// OverdueRecheck up: a backoff that needs no memory, so it holds across restarts.
func recheck(t, now time.Time) time.Time {
	if t.IsZero() || t.After(now) {
		return t
	}
	return now.Add(max(OverdueRecheck, now.Sub(t)))
}

// Drift reports whether the key left the state the status last recorded without the spec
// changing, that is, someone changed it outside Kubernetes, and the decision puts it back.
func Drift(lastPhase v1alpha1.Phase, specChanged bool, key *kms.Key, d Decision) bool {
	if specChanged || lastPhase == "" || key == nil || string(lastPhase) == string(key.State) {
		return false
	}
	switch d.Action {
	case Enable, Disable, ScheduleDeletion, CancelDeletion:
		return true
	}
	return false
}
