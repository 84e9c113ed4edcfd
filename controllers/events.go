package controllers

import (
	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/keystatus"
)

// event records what happened to a resource's key (docs/api.md lists the reasons); a reconciler
// built without a recorder, as in some tests, records none.
func (r *CustomerMasterKeyReconciler) event(cmk *v1alpha1.CustomerMasterKey, eventType, reason, action, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(cmk, nil, eventType, reason, action, note, args...)
	}
}

// emit records the events keystatus computed that pass.
func (r *CustomerMasterKeyReconciler) emit(cmk *v1alpha1.CustomerMasterKey, events []keystatus.Event, pass func(keystatus.Event) bool) {
	for _, e := range events {
		if pass(e) {
			r.event(cmk, e.Type, e.Reason, e.Action, "%s", e.Message)
		}
	}
}
