package controllers

import (
	"fmt"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// managedKeyID is the key the resource manages: the one recorded in status, else the one
// spec.keyID asks to adopt.
func managedKeyID(cmk *v1alpha1.CustomerMasterKey) string {
	if cmk.Status.KeyID != "" {
		return cmk.Status.KeyID
	}
	return cmk.Spec.KeyID
}

// adopt records the key spec.keyID names as this resource's key, in whatever state it is. When
// the KMS has no such key it says so and reports the resource blocked: nothing is created in
// its place.
func (r *CustomerMasterKeyReconciler) adopt(cmk *v1alpha1.CustomerMasterKey, key *kms.Key) (blocked bool) {
	if cmk.Status.KeyID != "" || cmk.Spec.KeyID == "" {
		return false
	}
	if key == nil {
		r.setBlocked(cmk, v1alpha1.ReasonKeyNotFound, v1alpha1.ReasonKeyNotFound, fmt.Sprintf(
			"The KMS has no key %s to adopt: check spec.keyID, which can still change until a key is adopted", cmk.Spec.KeyID))
		return true
	}
	cmk.Status.KeyID = key.ID
	r.event(cmk, "Normal", v1alpha1.EventAdopted, "AdoptKey", "Adopted key %s, which is %s", key.ID, key.State)
	return false
}

// mismatch describes how the key differs from the spec in what cannot change; empty when it
// matches or there is no key.
func mismatch(cmk *v1alpha1.CustomerMasterKey, key *kms.Key) string {
	if key == nil || key.State == kms.StateDeleted {
		return ""
	}
	return planner.Mismatch(cmk.Spec, key)
}
