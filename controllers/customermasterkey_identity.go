package controllers

import (
	"context"
	"fmt"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// ownKey reads the resource's own key: the one status records, else the one the KMS made with
// its creation token. Status may have lost the ID (a crash right after the create, a status
// write that lost a race), so "no key ID" is never taken to mean "no key" without asking the
// KMS. A key found that way is recorded at once, unless spec.keyID names another key. nil
// means there is no such key: none was ever made, or the KMS no longer has it.
func (r *CustomerMasterKeyReconciler) ownKey(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (*kms.Key, error) {
	if id := cmk.Status.KeyID; id != "" {
		return r.observe(ctx, id)
	}
	key, err := r.KMS.Lookup(ctx, creationToken(cmk))
	if kms.IsNotFound(err) && !cmk.DeletionTimestamp.IsZero() && !createAttempt(cmk).IsZero() {
		key, err = r.findUnmarked(ctx, cmk)
	}
	if kms.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("looking up the key made for %s/%s: %w", cmk.Namespace, cmk.Name, err)
	}
	if cmk.Spec.KeyID == "" || cmk.Spec.KeyID == key.ID {
		log.FromContext(ctx).Info("Found the key made for this resource, whose ID status had lost", "keyID", key.ID)
		cmk.Status.KeyID = key.ID
	}
	return &key, nil
}

// findUnmarked asks a provider whose creates are two calls for a key this resource's create
// attempt made and could not mark (a crash between the two): a resource being deleted never
// makes its key, so only this finds it, and its deletionPolicy is applied to it.
func (r *CustomerMasterKeyReconciler) findUnmarked(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (kms.Key, error) {
	finder, ok := kms.As[kms.Finder](r.KMS)
	if !ok || reservedAlias(cmk) != "" {
		// An alias this namespace may not hold was never created for it: nothing to find.
		return kms.Key{}, &kms.NotFoundError{Token: creationToken(cmk)}
	}
	prov, err := r.provenance(ctx, cmk)
	if err != nil {
		return kms.Key{}, err
	}
	return finder.Find(ctx, createRequest(cmk, prov))
}

// findKey reads the key the resource manages: its own (see ownKey), or the one spec.keyID
// asks to adopt, once the adoption rules allow it (see adoptKey). A resource that made a key
// of its own (its ID lost before spec.keyID was set) keeps that one: adopting another would
// leave it behind, owned by nothing. A key in status that the KMS records as another
// resource's is refused: nothing is done to it from here.
func (r *CustomerMasterKeyReconciler) findKey(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (*kms.Key, error) {
	own, err := r.ownKey(ctx, cmk)
	if err != nil {
		return nil, err
	}
	if cmk.Status.KeyID != "" {
		if own != nil && own.State != kms.StateDeleted {
			if err := r.verifyOwner(ctx, cmk, own.ID); err != nil {
				return nil, err
			}
			if err := r.keepPolicy(ctx, cmk, own); err != nil {
				return nil, err
			}
		}
		return own, nil
	}
	if cmk.Spec.KeyID == "" {
		return own, nil
	}
	if own != nil {
		return nil, &kms.RejectedError{Reason: fmt.Sprintf(
			"This resource already has key %s (made or claimed for it before status recorded it), so it cannot adopt key %s: "+
				"remove spec.keyID to keep that key, or delete this resource (its deletionPolicy applies to %s) and adopt %s with a new one",
			own.ID, cmk.Spec.KeyID, own.ID, cmk.Spec.KeyID)}
	}
	return r.adoptKey(ctx, cmk)
}

// observe reads the key from the KMS; nil when the KMS no longer has it.
func (r *CustomerMasterKeyReconciler) observe(ctx context.Context, keyID string) (*kms.Key, error) {
	key, err := r.KMS.Observe(ctx, keyID)
	if kms.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &key, nil
}

// creationToken makes Create idempotent and Lookup possible: the resource's UID, which no
// other resource, and no later resource of the same name, ever has.
func creationToken(cmk *v1alpha1.CustomerMasterKey) string { return string(cmk.UID) }

// mismatch describes how the key differs from the spec in what cannot change; empty when it
// matches or there is no key.
func mismatch(cmk *v1alpha1.CustomerMasterKey, key *kms.Key) string {
	if key == nil || key.State == kms.StateDeleted {
		return ""
	}
	return planner.Mismatch(cmk.Spec, key)
}

// CreateAttemptAnnotation records when the operator first set out to make the resource's key
// (RFC 3339). A KMS without idempotent creates (Huawei) may be left with an untagged key by a
// create that died before tagging it; that key is this resource's only if it was made after
// this time, with this resource's alias. A key made before, by anyone, is never taken.
const CreateAttemptAnnotation = "kms.cmk.io/create-attempted-at"

// ensureMetadata adds the finalizer, and records a create attempt when a key is about to be
// made, in one write.
func (r *CustomerMasterKeyReconciler) ensureMetadata(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	attempt := cmk.Status.KeyID == "" && cmk.Spec.KeyID == "" && !cmk.Spec.DeletionScheduled && cmk.Annotations[CreateAttemptAnnotation] == ""
	if controllerutil.ContainsFinalizer(cmk, Finalizer) && !attempt {
		return nil
	}
	patch := client.MergeFromWithOptions(cmk.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.AddFinalizer(cmk, Finalizer)
	if attempt {
		if cmk.Annotations == nil {
			cmk.Annotations = map[string]string{}
		}
		cmk.Annotations[CreateAttemptAnnotation] = r.Clock.Now().UTC().Format(attemptLayout)
	}
	if err := r.Patch(ctx, cmk, patch); err != nil {
		return fmt.Errorf("adding finalizer: %w", err)
	}
	r.writes.wrote(cmk)
	return nil
}

// attemptLayout is RFC 3339 with milliseconds, the precision of the KMS's creation dates.
const attemptLayout = "2006-01-02T15:04:05.000Z07:00"

// createAttempt is when the resource's first create attempt began; zero when none is recorded.
// Whoever may edit the resource may edit the annotation, so it is never taken to be earlier
// than the resource itself, which the apiserver dates: a tenant cannot widen the window to
// take a key someone made before the resource existed. Nor later than kms.AttemptWindow after
// it: else a tenant could date it just before a key someone made with that alias days later,
// and take the key. A first attempt that late (a resource paused from the start) has none: a
// crash between its create and the key's tagging then leaves an AliasInUse to settle with
// spec.keyID, never someone else's key taken.
func createAttempt(cmk *v1alpha1.CustomerMasterKey) time.Time {
	t, err := time.Parse(time.RFC3339, cmk.Annotations[CreateAttemptAnnotation])
	created := cmk.CreationTimestamp.Time
	switch {
	case err != nil || t.After(created.Add(kms.AttemptWindow)):
		return time.Time{}
	case t.Before(created):
		return created
	}
	return t
}
