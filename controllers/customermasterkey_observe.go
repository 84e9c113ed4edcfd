package controllers

import (
	"context"
	"fmt"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/keystatus"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// observeOnly is the reconcile of managementPolicy Observe: the key spec.keyID names is read
// and reported (state, dates, rotation, tags), and nothing is written to the KMS, not even
// the owner tags an adoption records. Which keys a namespace may observe follows the adoption
// rules, bar one: a key of this namespace that another resource manages may be observed.
func (r *CustomerMasterKeyReconciler) observeOnly(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) outcome {
	id := cmk.Spec.KeyID
	key, err := r.observe(ctx, id)
	if err != nil {
		return failed(nil, "Observing", err)
	}
	// Checked once per process and key, whatever status says: whoever may edit the status
	// could write a key ID there that the rules would refuse.
	if known, ok := r.observing.Load(cmk.UID); !ok || known != id {
		if key == nil || key.State == kms.StateDeleted {
			if cmk.Status.KeyID != id {
				return failed(nil, "", &keystatus.Blocked{Reason: v1alpha1.ReasonKeyNotFound, Message: fmt.Sprintf(
					"The KMS has no key %s to observe, or it is deleted: check spec.keyID", id)})
			}
		} else {
			o, prov, err := r.ownership(ctx, id)
			if err != nil {
				return failed(nil, "Observing", err)
			}
			no, err := r.mayObserve(ctx, cmk, id, o, prov)
			if err != nil {
				return failed(nil, "Observing", err)
			}
			if no != nil {
				return failed(nil, "", &keystatus.Blocked{Reason: v1alpha1.ReasonAdoptionRefused,
					Message: no.why + ": this namespace may not observe it either"})
			}
			r.observing.Store(cmk.UID, id)
		}
	}
	key, extrasErr := r.withExtras(ctx, cmk, key)
	cmk.Status.KeyID = id
	if extrasErr != nil {
		return failed(key, "Reading rotation and tags of", extrasErr)
	}
	return outcome{key: key, decision: planner.Next(r.input(cmk, key))}
}

// mayObserve applies the adoption rules to a key a resource asks to observe: a key recorded as
// this namespace's may be, whoever manages it; any other as mayTake says.
func (r *CustomerMasterKeyReconciler) mayObserve(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string, o kms.Owner, prov kms.Provenance) (*denial, error) {
	if no, err := r.otherCluster(ctx, cmk, id, prov); no != nil || err != nil {
		return no, err
	}
	if !o.IsZero() && o.Namespace != "" && o.In(cmk.Namespace) {
		return nil, nil
	}
	return r.mayTake(ctx, cmk, id, o, prov)
}

// retainObserved records Retain on a key this resource itself had made under Manage before it
// switched to Observe, as its deletion leaves the key: without that, the provenance would
// still say what the resource last asked under Manage, and an orphan sweep would apply it once
// the resource is gone. It is the one write an Observe resource ever causes, to the operator's
// own record, and only on deletion; a key any other resource made is never written.
func (r *CustomerMasterKeyReconciler) retainObserved(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	rec, ok := kms.As[kms.Recorder](r.KMS)
	if id := cmk.Status.KeyID; !ok || id == "" {
		return nil
	}
	o, prov, err := rec.Provenance(ctx, cmk.Status.KeyID)
	if kms.IsNotFound(err) || err == nil && (o.UID != string(cmk.UID) || prov.IsZero() || prov.DeletionPolicy == kms.PolicyRetain) {
		return nil
	}
	if err != nil {
		return err
	}
	return rec.SetPolicy(ctx, cmk.Status.KeyID, kms.PolicyRetain, prov.PendingDays)
}
