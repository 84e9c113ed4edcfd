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
			if err := r.retainOwn(ctx, cmk, id, o, prov); err != nil {
				return failed(key, "Recording the deletion policy of", err)
			}
			r.observing.Store(cmk.UID, id)
		}
	}
	key, extrasErr := r.withExtras(ctx, cmk, key)
	cmk.Status.KeyID = id
	r.countUsage(ctx, cmk)
	if extrasErr != nil {
		return failed(key, "Reading rotation and tags of", extrasErr)
	}
	return outcome{key: key, decision: planner.Next(r.input(cmk, key))}
}

// mayObserve applies the adoption rules to a key a resource asks to observe: a key recorded as
// this namespace's may be, whoever manages it; any other as mayTake says.
func (r *CustomerMasterKeyReconciler) mayObserve(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string, o kms.Owner, prov kms.Provenance) (*denial, error) {
	if !o.IsZero() && o.Namespace != "" && o.In(cmk.Namespace) {
		return r.otherCluster(ctx, cmk, id, prov)
	}
	return r.mayTake(ctx, cmk, id, o, prov) // the cluster rule included
}

// retainOwn records Retain on a key this resource itself made under Manage before it switched
// to Observe, since deleting it now leaves the key: else the provenance would still say what
// the resource asked under Manage, and an orphan sweep would apply that once the resource is
// gone. It is the one write an Observe resource ever causes, to the operator's own record, once
// when the switch is seen; a key any other resource owns is never written.
func (r *CustomerMasterKeyReconciler) retainOwn(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string, o kms.Owner, prov kms.Provenance) error {
	rec, ok := kms.As[kms.Recorder](r.KMS)
	if !ok || o.UID != string(cmk.UID) || prov.IsZero() || prov.DeletionPolicy == kms.PolicyRetain {
		return nil
	}
	prov.DeletionPolicy = kms.PolicyRetain
	return rec.SetPolicy(ctx, id, prov)
}

// retainObserved is retainOwn for an Observe resource being deleted, in case the switch was
// never seen (the resource switched and deleted while no manager ran).
func (r *CustomerMasterKeyReconciler) retainObserved(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	id := cmk.Status.KeyID
	if _, ok := kms.As[kms.Recorder](r.KMS); !ok || id == "" {
		return nil
	}
	if known, ok := r.observing.Load(cmk.UID); ok && known == id {
		return nil // seen, and done, in this process
	}
	o, prov, err := r.ownership(ctx, id)
	if kms.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	return r.retainOwn(ctx, cmk, id, o, prov)
}
