package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// A key belongs to one CustomerMasterKey, and the KMS records which (kms.Owner), so that
// ownership survives the loss of any status. Tenants are namespaces: a team with edit rights
// on CustomerMasterKeys in its namespace must not reach another namespace's keys through
// spec.keyID, an alias, or a message.

// AllowAdoptionLabel on a Namespace lets its resources adopt keys made outside the operator
// (in a console, by Terraform). Tenants usually cannot label their Namespace; an administrator
// does, for the namespaces that may take such keys.
const AllowAdoptionLabel = "kms.cmk.io/allow-key-adoption"

// The operator reads Namespaces one at a time, for AllowAdoptionLabel, and watches none.
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get

// refusal is something only a person can fix about which key a resource may have: reported
// in both conditions, looked at again on the slow resync, and nothing done to any key.
type refusal struct{ reason, message string }

func (e *refusal) Error() string { return e.message }

func ownerOf(cmk *v1alpha1.CustomerMasterKey) kms.Owner {
	return kms.Owner{Namespace: cmk.Namespace, Name: cmk.Name, UID: string(cmk.UID)}
}

// adoptKey adopts the key spec.keyID names, when it exists, this resource may take it, and it
// matches keySpec, keyUsage and origin. Until then nothing is recorded: spec.keyID can still be
// corrected, and deleting the resource does nothing to the key. The claim is recorded in the
// KMS before status, so a crash in between finds the key already this resource's.
func (r *CustomerMasterKeyReconciler) adoptKey(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (*kms.Key, error) {
	id := cmk.Spec.KeyID
	key, err := r.observe(ctx, id)
	if err != nil {
		return nil, err
	}
	if key == nil || key.State == kms.StateDeleted {
		return nil, &refusal{reason: v1alpha1.ReasonKeyNotFound, message: fmt.Sprintf(
			"The KMS has no key %s to adopt, or it is deleted: check spec.keyID, which can still change until a key is adopted", id)}
	}
	own, err := r.KMS.Ownership(ctx, id)
	if err != nil {
		return nil, err
	}
	if own.Owner.UID != string(cmk.UID) {
		if err := r.mayTake(ctx, cmk, id, own); err != nil {
			return nil, err
		}
		if msg := mismatch(cmk, key); msg != "" {
			return nil, &refusal{reason: v1alpha1.ReasonSpecMismatch, message: msg + "; nothing is adopted until they match (spec.keyID can still change)"}
		}
		if err := r.KMS.Claim(ctx, id, ownerOf(cmk), own.Owner); err != nil {
			return nil, err
		}
	}
	cmk.Status.KeyID = id
	r.owned.Store(cmk.UID, id)
	r.event(cmk, "Normal", v1alpha1.EventAdopted, "AdoptKey", "Adopted key %s, which is %s", key.ID, key.State)
	return key, nil
}

// mayTake applies the adoption rules to a key owned by someone else, or by no one: never
// across namespaces, never from a live resource, and a key made outside the operator only
// where the administrator allows it.
func (r *CustomerMasterKeyReconciler) mayTake(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string, own kms.Ownership) error {
	switch o := own.Owner; {
	case o.IsZero() && !own.MadeByOperator:
		allowed, err := r.adoptionAllowed(ctx, cmk.Namespace)
		if err != nil || allowed {
			return err
		}
		return &refusal{reason: v1alpha1.ReasonAdoptionRefused, message: fmt.Sprintf(
			"Key %s was made outside this operator; such keys can be adopted only in namespaces an administrator labels %s=true, "+
				"and namespace %s is not: ask for the label, or remove spec.keyID to have a new key made", id, AllowAdoptionLabel, cmk.Namespace)}
	case !o.In(cmk.Namespace):
		return &refusal{reason: v1alpha1.ReasonAdoptionRefused, message: fmt.Sprintf(
			"Key %s belongs, or last belonged, to a CustomerMasterKey in another namespace, and keys are never adopted across namespaces: "+
				"manage it from that namespace, or remove spec.keyID to have a new key made", id)}
	}
	live, err := r.liveOwner(ctx, cmk.Namespace, own.Owner.UID)
	if err != nil || live == "" {
		return err
	}
	return &refusal{reason: v1alpha1.ReasonAdoptionRefused, message: fmt.Sprintf(
		"Key %s is managed by CustomerMasterKey %s in this namespace, and a key has one resource: delete %s first "+
			"(with deletionPolicy Retain the key stays), then this resource adopts it", id, live, live)}
}

// liveOwner is the name of the resource of this namespace with this UID; empty when it is gone.
// The cache serves: the owner's own reconcile recorded it, from the same cache.
func (r *CustomerMasterKeyReconciler) liveOwner(ctx context.Context, namespace, uid string) (string, error) {
	var list v1alpha1.CustomerMasterKeyList
	if err := r.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		return "", fmt.Errorf("listing the CustomerMasterKeys of namespace %s: %w", namespace, err)
	}
	for i := range list.Items {
		if string(list.Items[i].UID) == uid {
			return list.Items[i].Name, nil
		}
	}
	return "", nil
}

func (r *CustomerMasterKeyReconciler) adoptionAllowed(ctx context.Context, namespace string) (bool, error) {
	ns := &corev1.Namespace{}
	if err := r.apiReader().Get(ctx, client.ObjectKey{Name: namespace}, ns); err != nil {
		return false, fmt.Errorf("reading namespace %s for label %s: %w", namespace, AllowAdoptionLabel, err)
	}
	return ns.Labels[AllowAdoptionLabel] == "true", nil
}

// verifyOwner checks, once per resource and key in this process, that the KMS records the key
// in status as this resource's. A key recorded before owners were (adopted under older rules)
// is claimed now; one the KMS records as another resource's is refused. Once verified it stays
// so: no one else may claim a key while its owner lives.
func (r *CustomerMasterKeyReconciler) verifyOwner(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string) error {
	if known, ok := r.owned.Load(cmk.UID); ok && known == id {
		return nil
	}
	own, err := r.KMS.Ownership(ctx, id)
	if err != nil {
		return err
	}
	me := ownerOf(cmk)
	switch o := own.Owner; {
	case o.UID == me.UID && o.Is(me.Namespace, me.Name):
	case o.UID == me.UID, o.IsZero():
		// Recorded incompletely (a key made before owner tags), or not at all: complete it.
		if err := r.KMS.Claim(ctx, id, me, o); err != nil {
			return err
		}
	default:
		where := "in another namespace"
		if o.In(cmk.Namespace) {
			where = "in this namespace"
			if live, err := r.liveOwner(ctx, cmk.Namespace, o.UID); err == nil && live != "" {
				where = fmt.Sprintf("%s in this namespace", live)
			}
		}
		return &refusal{reason: v1alpha1.ReasonKeyOwnedElsewhere, message: fmt.Sprintf(
			"The KMS records key %s as belonging to another CustomerMasterKey (%s), so this resource does nothing to it: "+
				"delete this resource (its deletionPolicy is not applied to a key it does not own)", id, where)}
	}
	r.owned.Store(cmk.UID, id)
	return nil
}

// reclaim handles a Create refused because a key holds the alias. A key retained by a resource
// of the same namespace and name, now gone, is taken back: that is a resource created again
// (kubectl delete and apply, a GitOps restore). Any other holder is reported, saying what this
// namespace can do, and naming a key or resource only when this namespace may know it.
func (r *CustomerMasterKeyReconciler) reclaim(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, inUse *kms.AliasInUseError) (*kms.Key, error) {
	held, err := r.observe(ctx, inUse.KeyID)
	if err != nil {
		return nil, err
	}
	if held == nil || held.State == kms.StateDeleted {
		return nil, fmt.Errorf("alias %q was held by a key that is now gone; creating again", inUse.Alias)
	}
	own, err := r.KMS.Ownership(ctx, held.ID)
	if err != nil {
		return nil, err
	}
	o := own.Owner
	live := ""
	if o.In(cmk.Namespace) {
		if live, err = r.liveOwner(ctx, cmk.Namespace, o.UID); err != nil {
			return nil, err
		}
	}
	if o.Is(cmk.Namespace, cmk.Name) && live == "" {
		if msg := mismatch(cmk, held); msg != "" {
			return nil, &refusal{reason: v1alpha1.ReasonAliasInUse, message: fmt.Sprintf(
				"Alias %q is held by key %s, which a deleted CustomerMasterKey of this name retained, but it cannot be taken back: %s. "+
					"Create this resource again with a matching spec, or with another spec.alias", inUse.Alias, held.ID, msg)}
		}
		if err := r.KMS.Claim(ctx, held.ID, ownerOf(cmk), o); err != nil {
			return nil, err
		}
		cmk.Status.KeyID = held.ID
		r.owned.Store(cmk.UID, held.ID)
		r.event(cmk, "Normal", v1alpha1.EventReclaimed, "ReclaimKey",
			"Took back key %s (%s), which the CustomerMasterKey of this namespace and name deleted before retained", held.ID, held.State)
		return held, nil
	}
	return nil, &refusal{reason: v1alpha1.ReasonAliasInUse, message: r.aliasTaken(ctx, cmk, inUse.Alias, held.ID, own, live)}
}

// aliasTaken says what a namespace can do about an alias another key holds.
func (r *CustomerMasterKeyReconciler) aliasTaken(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, alias, id string, own kms.Ownership, live string) string {
	recreate := "delete this resource and create it again with another spec.alias (an alias cannot change)"
	o := own.Owner
	switch {
	case live != "":
		return fmt.Sprintf("Alias %q is used by the key of CustomerMasterKey %s in this namespace: %s", alias, live, recreate)
	case o.In(cmk.Namespace):
		return fmt.Sprintf("Alias %q is held by key %s, which a deleted CustomerMasterKey of this namespace retained: "+
			"set spec.keyID: %s to adopt it, or %s", alias, id, id, recreate)
	case o.IsZero() && !own.MadeByOperator:
		if allowed, err := r.adoptionAllowed(ctx, cmk.Namespace); err == nil && allowed {
			return fmt.Sprintf("Alias %q is held by key %s, made outside this operator: set spec.keyID: %s to adopt it, or %s", alias, id, id, recreate)
		}
	}
	return fmt.Sprintf("Alias %q is already used by a key this namespace cannot adopt: %s", alias, recreate)
}
