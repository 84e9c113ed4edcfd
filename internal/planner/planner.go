// Package planner decides, from what the user asks for and what the KMS reports, the one next
// thing to do to a key. It is pure: no clients, no clock of its own, so every state × spec
// combination is a table test.
package planner

import (
	"fmt"
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
	// OverdueRecheck is how soon a key past its deletion date, that the KMS has not deleted
	// yet, is looked at again.
	OverdueRecheck = time.Minute
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
	Now                      time.Time
}

// Decision is the next action and, when none is due, when to look again.
type Decision struct {
	Action Action
	// RecheckAt is when the key should be looked at again because the KMS changes it by then
	// (a deletion date, a key being created); zero means the slow resync is enough.
	RecheckAt time.Time
}

// Next returns the one next action for a key.
func Next(in Input) Decision {
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
		if !in.Spec.DeletionScheduled {
			return Decision{Action: CancelDeletion}
		}
		return Decision{Action: None, RecheckAt: deletionRecheck(k.DeletionDate, in.Now)}
	}
	// Enabled, Disabled or PendingImport.
	if in.Spec.DeletionScheduled {
		return Decision{Action: ScheduleDeletion}
	}
	if k.State == kms.StatePendingImport && in.Spec.Origin == v1alpha1.OriginExternal {
		if d, ok := nextImport(in); ok {
			return d
		}
	}
	switch {
	case k.State == kms.StateEnabled && !in.Spec.Enabled:
		return Decision{Action: Disable}
	case k.State == kms.StateDisabled && in.Spec.Enabled:
		return Decision{Action: Enable}
	case describes(in.Spec, k):
		return Decision{Action: SetDescription}
	case k.State == kms.StatePendingImport && !in.ImportParametersExpireAt.IsZero():
		// Waiting for the user to bring material; the parameters are replaced before they expire.
		return Decision{Action: None, RecheckAt: in.ImportParametersExpireAt.Add(-ImportParametersRefresh)}
	}
	// Matches the spec; imported material that expires is looked at again then.
	return Decision{Action: None, RecheckAt: k.MaterialExpiresAt}
}

// describes reports whether the key's description must change to the spec's. An empty one
// leaves the key's as it is, so adopting a key does not wipe what it says.
func describes(spec v1alpha1.CustomerMasterKeySpec, k *kms.Key) bool {
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

// nextImport moves an External key without material toward having it: import what the spec
// points at, else make sure usable import parameters are published.
func nextImport(in Input) (Decision, bool) {
	if in.Spec.KeyMaterial != nil {
		return Decision{Action: ImportMaterial}, true
	}
	if in.ImportParametersExpireAt.IsZero() || !in.Now.Before(in.ImportParametersExpireAt.Add(-ImportParametersRefresh)) {
		return Decision{Action: IssueImportParameters}, true
	}
	return Decision{}, false
}

func nextOnDelete(in Input) Decision {
	if in.Key == nil {
		return Decision{Action: Release}
	}
	switch in.Key.State {
	case kms.StateDeleted, kms.StatePendingDeletion:
		// Already going or gone: the resource does not wait out the deletion window.
		return Decision{Action: Release}
	case kms.StateCreating:
		return Decision{Action: None, RecheckAt: in.Now.Add(CreatingRecheck)}
	}
	if in.Spec.DeletionPolicy == v1alpha1.DeletionPolicyDelete {
		return Decision{Action: ScheduleDeletion}
	}
	return Decision{Action: Release}
}

func deletionRecheck(date, now time.Time) time.Time {
	if date.IsZero() || !date.After(now) {
		return now.Add(OverdueRecheck)
	}
	return date
}

// Readiness is the Ready condition for a key in a given state under a given spec.
type Readiness struct {
	Ready   bool
	Reason  string
	Message string
}

// Ready says whether the key is usable and matches the spec and, when not, what it waits for
// in words a person can act on. keyID is the ID in status, empty before creation.
func Ready(spec v1alpha1.CustomerMasterKeySpec, keyID string, key *kms.Key) Readiness {
	if key == nil {
		if keyID == "" && spec.DeletionScheduled {
			return Readiness{Reason: v1alpha1.ReasonNotCreated,
				Message: "No key is created while spec.deletionScheduled is true; set it to false to create the key"}
		}
		if keyID == "" {
			return Readiness{Reason: v1alpha1.ReasonCreating, Message: "The key is being created"}
		}
		return Readiness{Reason: v1alpha1.ReasonKeyDeleted, Message: fmt.Sprintf(
			"The KMS has no key %s any more; it is never recreated. Delete this resource, or create a new one for a new key", keyID)}
	}
	switch key.State {
	case kms.StateDeleted:
		return Readiness{Reason: v1alpha1.ReasonKeyDeleted, Message: fmt.Sprintf(
			"Key %s was deleted by the KMS at its deletion date; it is never recreated. Delete this resource, or create a new one for a new key", key.ID)}
	case kms.StateCreating:
		return Readiness{Reason: v1alpha1.ReasonCreating, Message: "The KMS is still creating the key"}
	case kms.StatePendingDeletion:
		if !spec.DeletionScheduled {
			return Readiness{Reason: v1alpha1.ReasonProgressing, Message: "Canceling the scheduled deletion"}
		}
		return Readiness{Reason: v1alpha1.ReasonPendingDeletion,
			Message: "The key is scheduled for deletion; set spec.deletionScheduled to false before the deletion date to cancel it"}
	case kms.StatePendingImport:
		if spec.DeletionScheduled {
			return Readiness{Reason: v1alpha1.ReasonProgressing, Message: "Scheduling the key's deletion"}
		}
		if spec.KeyMaterial != nil {
			return Readiness{Reason: v1alpha1.ReasonProgressing, Message: fmt.Sprintf(
				"Importing key material from Secret %s", spec.KeyMaterial.SecretRef.Name)}
		}
		return Readiness{Reason: v1alpha1.ReasonPendingImport, Message: "The key has no key material: wrap it with " +
			"status.importParameters.publicKey (RSAES_OAEP_SHA_256), store it with status.importParameters.importToken " +
			"in a Secret, and set spec.keyMaterial.secretRef to that Secret"}
	case kms.StateDisabled:
		if spec.Enabled || spec.DeletionScheduled {
			return Readiness{Reason: v1alpha1.ReasonProgressing, Message: "Moving the key to the state the spec asks for"}
		}
		return Readiness{Reason: v1alpha1.ReasonKeyDisabled,
			Message: "The key is disabled as spec.enabled asks; set spec.enabled to true to use it"}
	case kms.StateEnabled:
		if !spec.Enabled || spec.DeletionScheduled || describes(spec, key) {
			return Readiness{Reason: v1alpha1.ReasonProgressing, Message: "Moving the key to the state the spec asks for"}
		}
		return Readiness{Ready: true, Reason: v1alpha1.ReasonAvailable, Message: "The key is enabled and matches the spec"}
	}
	return Readiness{Reason: v1alpha1.ReasonProgressing, Message: fmt.Sprintf("The KMS reports state %q", key.State)}
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
