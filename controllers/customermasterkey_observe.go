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
	if cmk.Status.KeyID == "" {
		if key == nil || key.State == kms.StateDeleted {
			return failed(nil, "", &keystatus.Blocked{Reason: v1alpha1.ReasonKeyNotFound, Message: fmt.Sprintf(
				"The KMS has no key %s to observe, or it is deleted: check spec.keyID", id)})
		}
		o, err := r.KMS.Owner(ctx, id)
		if err != nil {
			return failed(nil, "Observing", err)
		}
		no, err := r.mayObserve(ctx, cmk, id, o)
		if err != nil {
			return failed(nil, "Observing", err)
		}
		if no != nil {
			return failed(nil, "", &keystatus.Blocked{Reason: v1alpha1.ReasonAdoptionRefused,
				Message: no.why + ": this namespace may not observe it either"})
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
func (r *CustomerMasterKeyReconciler) mayObserve(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string, o kms.Owner) (*denial, error) {
	if !o.IsZero() && o.Namespace != "" && o.In(cmk.Namespace) {
		return nil, nil
	}
	return r.mayTake(ctx, cmk, id, o)
}
