package controllers

import "github.com/cmk-operator/cmk-operator/api/v1alpha1"

// event records what happened to a resource's key (docs/api.md lists the reasons); a reconciler
// built without a recorder, as in some tests, records none.
func (r *CustomerMasterKeyReconciler) event(cmk *v1alpha1.CustomerMasterKey, eventType, reason, action, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(cmk, nil, eventType, reason, action, note, args...)
	}
}
