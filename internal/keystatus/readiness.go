package keystatus

import (
	"fmt"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// Class is what a reason says about the key against its spec, which is what GitOps engines
// read (docs/gitops.md): kstatus takes Reconciling=True as in progress and Stalled=True as
// failed; Argo CD's health check in config/argocd reads the same conditions.
type Class int

const (
	// Settled means the KMS is as the spec asks (Ready=True), whether or not the key can be
	// used: a key asked disabled or scheduled for deletion is settled when it is so.
	Settled Class = iota
	// Moving means the operator is taking the key toward the spec (Reconciling=True).
	Moving
	// Stalled means the spec cannot be reached until a person changes something (Stalled=True).
	Stalled
)

// Verdict is a reason with its class and a message a person can act on.
type Verdict struct {
	Class   Class
	Reason  string
	Message string
}

func settled(reason, msg string) Verdict { return Verdict{Settled, reason, msg} }
func moving(reason, msg string) Verdict  { return Verdict{Moving, reason, msg} }
func stalled(reason, msg string) Verdict { return Verdict{Stalled, reason, msg} }

// movingToSpec is the verdict of a key the planner still has calls to make for.
var movingToSpec = moving(v1alpha1.ReasonProgressing, "Moving the key to the state the spec asks for")

// Readiness says whether the KMS is as the spec asks and, when not, what the key waits for.
// It reads the key as the reconcile last saw it and the window status records.
func Readiness(in planner.Input) Verdict {
	spec, keyID, key, pendingDays := in.Spec, in.KeyID, in.Key, in.PendingDays
	if spec.ManagementPolicy == v1alpha1.ManagementPolicyObserve {
		return settled(v1alpha1.ReasonObserved, "Status follows the key in the KMS, and the operator changes nothing "+
			"(managementPolicy: Observe); set managementPolicy: Manage to have the spec applied")
	}
	if key == nil {
		switch {
		case keyID == "" && spec.DeletionScheduled:
			return settled(v1alpha1.ReasonNotCreated,
				"No key is created while spec.deletionScheduled is true; set it to false to create the key")
		case keyID == "":
			return moving(v1alpha1.ReasonCreating, "The key is being created")
		}
		return deleted(spec, fmt.Sprintf("The KMS has no key %s any more", keyID))
	}
	switch key.State {
	case kms.StateDeleted:
		return deleted(spec, fmt.Sprintf("Key %s was deleted by the KMS", key.ID))
	case kms.StateCreating:
		return moving(v1alpha1.ReasonCreating, "The KMS is still creating the key")
	case kms.StatePendingDeletion:
		if !spec.DeletionScheduled {
			return moving(v1alpha1.ReasonProgressing, "Canceling the scheduled deletion")
		}
		if pendingDays != 0 && pendingDays != spec.PendingDays {
			return moving(v1alpha1.ReasonProgressing, fmt.Sprintf(
				"Scheduling the deletion again with spec.pendingDays %d (it was scheduled with %d)", spec.PendingDays, pendingDays))
		}
		return settled(v1alpha1.ReasonPendingDeletion,
			"The key is scheduled for deletion, as spec.deletionScheduled asks; set it to false before the deletion date to cancel")
	case kms.StatePendingImport:
		if spec.DeletionScheduled {
			return moving(v1alpha1.ReasonProgressing, "Scheduling the key's deletion")
		}
		if spec.KeyMaterial != nil {
			return moving(v1alpha1.ReasonProgressing, fmt.Sprintf("Importing key material from Secret %s", spec.KeyMaterial.SecretRef.Name))
		}
		return settled(v1alpha1.ReasonPendingImport, "The key has no key material: wrap it with "+
			"status.importParameters.publicKey (RSAES_OAEP_SHA_256), store it with status.importParameters.importToken "+
			"in a Secret, and set spec.keyMaterial.secretRef to that Secret")
	case kms.StateDisabled:
		if spec.Enabled || spec.DeletionScheduled || planner.Retags(spec, key) {
			return movingToSpec
		}
		msg := "The key is disabled, as spec.enabled asks; set spec.enabled to true to use it"
		if planner.RotationDiffers(spec, key.Rotation) {
			msg += "; spec.rotation takes effect once the key is enabled"
		}
		return settled(v1alpha1.ReasonKeyDisabled, msg)
	case kms.StateEnabled:
		if !spec.Enabled || spec.DeletionScheduled || planner.Describes(spec, key) || planner.Rotates(spec, key) || planner.Retags(spec, key) {
			return movingToSpec
		}
		return settled(v1alpha1.ReasonAvailable, "The key is enabled and matches the spec")
	}
	return moving(v1alpha1.ReasonProgressing, fmt.Sprintf("The KMS reports state %q", key.State))
}

// deleted is the verdict of a key the KMS no longer has: what the spec asked for when it
// asked for the deletion, else something only a person can settle, since a deleted key is
// never recreated.
func deleted(spec v1alpha1.CustomerMasterKeySpec, what string) Verdict {
	if spec.DeletionScheduled {
		return settled(v1alpha1.ReasonKeyDeleted, what+" at the end of the deletion spec.deletionScheduled asked for; "+
			"it is never recreated. Delete this resource, or create a new one for a new key")
	}
	return stalled(v1alpha1.ReasonKeyDeleted, what+"; it is never recreated. Delete this resource, or create a new one for a new key")
}
