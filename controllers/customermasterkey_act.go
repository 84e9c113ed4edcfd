package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/keystatus"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// maxActions bounds the KMS calls one reconcile makes. A spec change needs at most five in a
// row (cancel, schedule again; cancel, enable, rotation, tags; issue parameters, import, tags,
// disable; create, rotation, tags, disable); a provider that never reaches the state it
// reports is sent through the rate limiter instead.
const maxActions = 6

// drive is the one action loop, of a reconcile and of a deletion alike: it takes the planner's
// actions one after another, reading the key back after each, until the planner has none left
// (the key is as the spec asks, or waits for the KMS) or, for a resource being deleted, lets
// it go. readErr is a failed read of rotation or tags after an action: the state's calls go on.
func (r *CustomerMasterKeyReconciler) drive(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, key *kms.Key) (o outcome, readErr error) {
	decision := planner.Next(r.input(cmk, key))
	if lastPhase := cmk.Status.Phase; cmk.DeletionTimestamp.IsZero() &&
		planner.Drift(lastPhase, cmk.Generation != cmk.Status.ObservedGeneration, key, decision) {
		r.event(cmk, "Warning", v1alpha1.EventDriftDetected, "Observe",
			"Key %s is %s outside Kubernetes (status said %s); returning it to the spec: %s", key.ID, key.State, lastPhase, decision.Action)
	}
	for actions := 0; decision.Action != planner.None && decision.Action != planner.Release; actions++ {
		if actions == maxActions {
			return outcome{key: key, cut: true}, readErr
		}
		log.FromContext(ctx).Info("Acting on key", "action", decision.Action, "keyID", cmk.Status.KeyID)
		after, err := r.act(ctx, cmk, key, decision.Action)
		if err != nil {
			return failed(key, string(decision.Action), err), readErr
		}
		if after, err = r.extrasAfter(ctx, cmk, key, after, decision.Action); err != nil {
			readErr = err
		}
		key = after
		// The next decision starts from what the KMS now reports.
		keystatus.Record(&cmk.Status, r.input(cmk, key))
		decision = planner.Next(r.input(cmk, key))
	}
	if decision.Hold != "" {
		return failed(key, "", r.held(cmk, key, decision.Hold)), readErr
	}
	return outcome{key: key, decision: decision}, readErr
}

// held says why a guard rail keeps the planner from the call the spec asks for.
func (r *CustomerMasterKeyReconciler) held(cmk *v1alpha1.CustomerMasterKey, key *kms.Key, reason string) *keystatus.Blocked {
	id := cmk.Status.KeyID
	if key != nil {
		id = key.ID
	}
	if reason == v1alpha1.ReasonKeyInUse {
		return &keystatus.Blocked{Reason: reason, Message: inUseMessage(cmk, id), Hold: true}
	}
	msg := fmt.Sprintf("spec.deletionScheduled asks for the deletion of key %s, and spec.deletionProtection is true: "+
		"nothing is scheduled; clear the protection first", id)
	if !cmk.DeletionTimestamp.IsZero() {
		msg = fmt.Sprintf("deletionPolicy Delete asks for the deletion of key %s, and spec.deletionProtection is true: nothing is "+
			"scheduled, and the resource stays until the protection is cleared (kubectl patch cmk %s -n %s --type merge -p "+
			"'{\"spec\":{\"deletionProtection\":false}}'); to keep the key instead, set deletionPolicy: Retain", id, cmk.Name, cmk.Namespace)
	}
	return &keystatus.Blocked{Reason: reason, Message: msg, Hold: true}
}

// inUseMessage says what the spec asks of a key in use, who uses it, and how to go on.
func inUseMessage(cmk *v1alpha1.CustomerMasterKey, id string) string {
	var asked string
	switch {
	case !cmk.DeletionTimestamp.IsZero():
		asked = "deletionPolicy Delete, on deleting the resource, asks for the deletion of"
	case cmk.Spec.DeletionScheduled:
		asked = "spec.deletionScheduled asks for the deletion of"
	default:
		asked = "spec.enabled: false asks for disabling"
	}
	u := cmk.Status.Usage
	return fmt.Sprintf("%s key %s, which is in use by %d consumer(s): %s; nothing is done while it is (data they protect "+
		"could no longer be read). Remove the consumers, or annotate the resource %s=true to go ahead anyway "+
		"(kubectl annotate cmk %s -n %s %s=true)", asked, id, u.Consumers, strings.Join(u.Refs, ", "),
		v1alpha1.AllowWhileInUseAnnotation, cmk.Name, cmk.Namespace, v1alpha1.AllowWhileInUseAnnotation)
}

// input is the planner's view of the resource and its key as last read.
func (r *CustomerMasterKeyReconciler) input(cmk *v1alpha1.CustomerMasterKey, key *kms.Key) planner.Input {
	in := planner.Input{
		Spec:        cmk.Spec,
		KeyID:       cmk.Status.KeyID,
		Key:         key,
		Deleting:    !cmk.DeletionTimestamp.IsZero(),
		PendingDays: cmk.Status.PendingDays,
		LastPhase:   cmk.Status.Phase,
		Adopted:     cmk.Spec.KeyID != "",
		InUse:       inUse(cmk),
		Now:         r.Clock.Now(),
	}
	if p := cmk.Status.ImportParameters; p != nil {
		in.ImportParametersExpireAt = p.ExpiresAt.Time
	}
	if d := cmk.Status.DeletionDate; d != nil {
		in.DeletionDate = d.Time
	}
	return in
}

// act makes the KMS call the planner chose, reports it as an event, and reads the key back:
// the outcome of a call (cancel gives Disabled or PendingImport) is never assumed.
func (r *CustomerMasterKeyReconciler) act(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, key *kms.Key, action planner.Action) (*kms.Key, error) {
	id := cmk.Status.KeyID
	if key != nil {
		id = key.ID // the key found, also one status does not record (see findKey)
	}
	switch action {
	case planner.Create:
		if msg := reservedAlias(cmk); msg != "" {
			return nil, &keystatus.Blocked{Reason: v1alpha1.ReasonAliasReserved, Message: msg}
		}
		prov, err := r.provenance(ctx, cmk)
		if err != nil {
			return nil, err
		}
		created, err := r.KMS.Create(ctx, createRequest(cmk, prov))
		if inUse := kms.AsAliasInUse(err); inUse != nil {
			return r.reclaim(ctx, cmk, inUse)
		}
		if err != nil {
			return nil, err
		}
		// Recorded at once: whatever fails from here on, the status written with it names the
		// key (see writeStatus), and if that write never happens, Lookup finds the key.
		cmk.Status.KeyID = created.ID
		r.event(cmk, "Normal", v1alpha1.EventCreated, "CreateKey", "Created key %s (%s, origin %s)", created.ID, created.KeySpec, created.Origin)
		return r.readBack(ctx, created.ID)
	case planner.Enable:
		if err := r.KMS.Enable(ctx, id); err != nil {
			return nil, err
		}
		r.event(cmk, "Normal", v1alpha1.EventEnabled, "EnableKey", "Enabled key %s", id)
	case planner.Disable:
		if err := r.stillUnused(ctx, cmk, key); err != nil {
			return nil, err
		}
		if err := r.KMS.Disable(ctx, id); err != nil {
			return nil, err
		}
		r.event(cmk, "Normal", v1alpha1.EventDisabled, "DisableKey", "Disabled key %s", id)
	case planner.ScheduleDeletion:
		if err := r.stillUnused(ctx, cmk, key); err != nil {
			return nil, err
		}
		return r.scheduleDeletion(ctx, cmk, id)
	case planner.CancelDeletion:
		again := cmk.Spec.DeletionScheduled // canceled only to schedule again with another window
		if err := r.KMS.CancelDeletion(ctx, id); err != nil {
			return nil, err
		}
		cmk.Status.PendingDays = 0
		after, err := r.readBack(ctx, id)
		if err == nil && after != nil {
			why := ""
			if again {
				why = fmt.Sprintf(", to schedule it again with spec.pendingDays %d", cmk.Spec.PendingDays)
			}
			r.event(cmk, "Normal", v1alpha1.EventDeletionCanceled, "CancelKeyDeletion", "Canceled deletion of key %s%s; it is now %s", id, why, after.State)
		}
		return after, err
	case planner.SetDescription:
		if err := r.KMS.SetDescription(ctx, id, cmk.Spec.Description); err != nil {
			return nil, err
		}
	case planner.SetRotation:
		if err := r.setRotation(ctx, cmk, id); err != nil {
			return nil, err
		}
	case planner.SetTags:
		if err := r.setTags(ctx, cmk, id); err != nil {
			return nil, err
		}
	case planner.IssueImportParameters:
		if err := r.issueImportParameters(ctx, cmk); err != nil {
			return nil, err
		}
	case planner.ImportMaterial:
		if err := r.importMaterial(ctx, cmk); err != nil {
			return nil, err
		}
	default:
		return key, nil
	}
	return r.readBack(ctx, id)
}

// scheduleDeletion schedules the key's deletion with spec.pendingDays and records that window
// in status, but only when the date read back follows it: a KMS answers "already pending" with
// success, so a deletion someone scheduled a moment earlier with a shorter window would
// otherwise pass for the spec's. Unrecorded, it is scheduled again.
func (r *CustomerMasterKeyReconciler) scheduleDeletion(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string) (*kms.Key, error) {
	days := cmk.Spec.PendingDays
	asked := r.Clock.Now()
	if err := r.KMS.ScheduleDeletion(ctx, id, int(days)); err != nil {
		return nil, err
	}
	why := ""
	if !cmk.DeletionTimestamp.IsZero() {
		why = ", as deletionPolicy Delete asks"
	}
	r.event(cmk, "Normal", v1alpha1.EventDeletionScheduled, "ScheduleKeyDeletion", "Scheduled deletion of key %s in %d days%s", id, days, why)
	key, err := r.readBack(ctx, id)
	if err == nil && key != nil && key.State == kms.StatePendingDeletion &&
		!key.DeletionDate.Before(asked.Add(time.Duration(days)*24*time.Hour-windowTolerance)) {
		// The date recorded before is of a deletion that no longer exists; the new one is
		// recorded from the key.
		cmk.Status.PendingDays, cmk.Status.DeletionDate = days, nil
	}
	return key, err
}

// windowTolerance is how much earlier than "asked + pendingDays" a deletion date may be and
// still be the one the operator asked for. Windows are whole days (pending_days is an integer
// of days, 7-1096, in Huawei's schedule-key-deletion reference and in the embedded KMS), so a
// deletion someone scheduled with a shorter window is at least a day short and always caught,
// while the KMS's clock skew, or a date it rounds down (its reference does not say how it
// computes scheduled_deletion_date), never makes the operator reschedule its own deletion
// over and over: that would keep moving the date, and the key would never be deleted.
const windowTolerance = 24*time.Hour - time.Minute

func (r *CustomerMasterKeyReconciler) readBack(ctx context.Context, keyID string) (*kms.Key, error) {
	key, err := r.observe(ctx, keyID)
	if err != nil {
		return nil, fmt.Errorf("reading key %s back: %w", keyID, err)
	}
	return key, nil
}

func createRequest(cmk *v1alpha1.CustomerMasterKey, prov kms.Provenance) kms.CreateRequest {
	return kms.CreateRequest{
		Alias:       Alias(cmk),
		Description: cmk.Spec.Description,
		KeySpec:     string(cmk.Spec.KeySpec),
		KeyUsage:    string(cmk.Spec.KeyUsage),
		Origin:      string(cmk.Spec.Origin),
		Token:       creationToken(cmk),
		Owner:       ownerOf(cmk),
		Attempted:   createAttempt(cmk),
		Provenance:  prov,
	}
}
