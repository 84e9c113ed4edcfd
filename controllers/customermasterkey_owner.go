package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/keystatus"
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
		return nil, &keystatus.Blocked{Reason: v1alpha1.ReasonKeyNotFound, Message: fmt.Sprintf(
			"The KMS has no key %s to adopt, or it is deleted: check spec.keyID, which can still change until a key is adopted", id)}
	}
	own, prov, err := r.ownership(ctx, id)
	if err != nil {
		return nil, err
	}
	if own.UID != string(cmk.UID) {
		no, err := r.mayTake(ctx, cmk, id, own, prov)
		if err != nil {
			return nil, err
		}
		if no != nil {
			return nil, &keystatus.Blocked{Reason: v1alpha1.ReasonAdoptionRefused, Message: no.why + ": " + no.adopting}
		}
		if msg := mismatch(cmk, key); msg != "" {
			return nil, &keystatus.Blocked{Reason: v1alpha1.ReasonSpecMismatch, Message: msg + "; nothing is adopted until they match (spec.keyID can still change)"}
		}
		if err := r.KMS.Claim(ctx, id, ownerOf(cmk), own); err != nil {
			return nil, err
		}
	}
	cmk.Status.KeyID = id
	r.owned.Store(cmk.UID, id)
	r.event(cmk, "Normal", v1alpha1.EventAdopted, "AdoptKey", "Adopted key %s, which is %s", key.ID, key.State)
	return key, nil
}

// denial says why a resource may not take a key, and what to do when it asked by spec.keyID.
type denial struct{ why, adopting string }

// mayTake applies the adoption rules to a key owned by another resource, or by none: never
// across namespaces, never from a live resource, and a key whose owner the KMS does not know
// (made outside the operator, or by a version that recorded no namespace), or which was made
// from another cluster sharing the KMS, only where the administrator allows it. nil when the
// resource may take the key.
func (r *CustomerMasterKeyReconciler) mayTake(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string, o kms.Owner, prov kms.Provenance) (*denial, error) {
	if no, err := r.otherCluster(ctx, cmk, id, prov); no != nil || err != nil {
		return no, err
	}
	elsewhere := &denial{why: fmt.Sprintf("Key %s belongs, or last belonged, to a CustomerMasterKey in another namespace, "+
		"and keys never move across namespaces", id),
		adopting: "manage it from that namespace, or remove spec.keyID to have a new key made"}
	switch {
	case !o.IsZero() && o.Namespace == "":
		// Made by a version that recorded only its creating resource's UID. That resource, if
		// it lives, records its namespace at its next reconcile; until then it is refused.
		if live, err := r.liveOwner(ctx, "", o.UID); err != nil || live != "" {
			return elsewhere, err
		}
		fallthrough
	case o.IsZero():
		allowed, err := r.adoptionAllowed(ctx, cmk.Namespace)
		if err != nil || allowed {
			return nil, err
		}
		return &denial{why: fmt.Sprintf("The KMS records no owner for key %s (made outside this operator, or by a version that did not "+
			"record owners); such keys are adopted only in namespaces an administrator labels %s=true, and namespace %s is not",
			id, AllowAdoptionLabel, cmk.Namespace),
			adopting: "ask for the label, or remove spec.keyID to have a new key made"}, nil
	case !o.In(cmk.Namespace):
		return elsewhere, nil
	}
	live, err := r.liveOwner(ctx, cmk.Namespace, o.UID)
	if err != nil || live == "" {
		return nil, err
	}
	return &denial{why: fmt.Sprintf("Key %s is managed by CustomerMasterKey %s in this namespace, and a key has one resource", id, live),
		adopting: fmt.Sprintf("delete %s first (with deletionPolicy Retain the key stays), then this resource adopts it", live)}, nil
}

// liveOwner is the name of the resource of this namespace (any, for "") with this UID; empty
// when it is gone. The cache serves: the owner's own reconcile recorded it, from the same cache.
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
// in status as this resource's. A key recorded without an owner, or with another owner, was
// taken before owners were recorded (by an earlier version, or a restore onto a new UID): it is
// kept, and claimed, only if the adoption rules would let this resource adopt it now; else
// nothing is done to it from here. Once verified it stays so: no one else may claim a key
// while its owner lives.
func (r *CustomerMasterKeyReconciler) verifyOwner(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string) error {
	if known, ok := r.owned.Load(cmk.UID); ok && known == id {
		return nil
	}
	o, prov, err := r.ownership(ctx, id)
	if err != nil {
		return err
	}
	r.recorded.Store(cmk.UID, recordedPolicy{keyID: id, Provenance: prov}) // for keepPolicy
	me := ownerOf(cmk)
	if o.UID != me.UID || !o.Is(me.Namespace, me.Name) {
		if o.UID != me.UID {
			no, err := r.mayTake(ctx, cmk, id, o, prov)
			if err != nil {
				return err
			}
			if no != nil {
				return &keystatus.Blocked{Reason: v1alpha1.ReasonKeyOwnedElsewhere, Message: no.why + ". This resource does nothing to it: " +
					"delete this resource (its deletionPolicy is not applied to a key it does not own)"}
			}
		}
		// Recorded incompletely (a key made before owner tags), as another's that this resource
		// may take, or not at all: record this resource.
		if err := r.KMS.Claim(ctx, id, me, o); err != nil {
			return err
		}
	}
	r.owned.Store(cmk.UID, id)
	return nil
}

// otherCluster refuses a key made from another cluster that shares the KMS account (the same
// manifests applied to two clusters give their resources the same names, and so the same
// aliases): a key has one cluster, as it has one namespace. An administrator lets a namespace
// take such keys with the adoption label, for a restore into a new cluster; a key taken is then
// its new resource's, which no sweep of the old cluster judges (judge: not its maker's).
func (r *CustomerMasterKeyReconciler) otherCluster(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string, prov kms.Provenance) (*denial, error) {
	if prov.IsZero() {
		return nil, nil
	}
	if cluster, err := r.clusterID(ctx); err != nil || prov.Cluster == cluster {
		return nil, err
	}
	allowed, err := r.adoptionAllowed(ctx, cmk.Namespace)
	if err != nil || allowed {
		return nil, err
	}
	return &denial{why: fmt.Sprintf("Key %s was made from another cluster sharing this KMS, and keys never move between clusters "+
		"unless an administrator labels the namespace %s=true, as for a restore into a new cluster", id, AllowAdoptionLabel),
		adopting: "ask for the label, or remove spec.keyID to have a new key made"}, nil
}

// ownership reads what the KMS records of a key: its owner and, from a provider that records
// provenances, its provenance, in one read.
func (r *CustomerMasterKeyReconciler) ownership(ctx context.Context, id string) (kms.Owner, kms.Provenance, error) {
	if rec, ok := kms.As[kms.Recorder](r.KMS); ok {
		return rec.Provenance(ctx, id)
	}
	o, err := r.KMS.Owner(ctx, id)
	return o, kms.Provenance{}, err
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
	o, prov, err := r.ownership(ctx, held.ID)
	if err != nil {
		return nil, err
	}
	if o.UID == string(cmk.UID) {
		// Taken back before, and status lost it: a creation token does not find a key taken back.
		cmk.Status.KeyID = held.ID
		r.owned.Store(cmk.UID, held.ID)
		return held, nil
	}
	live := ""
	if o.In(cmk.Namespace) {
		if live, err = r.liveOwner(ctx, cmk.Namespace, o.UID); err != nil {
			return nil, err
		}
	}
	// Another cluster's resource of this namespace and name (the same manifests applied there)
	// may live: its key is taken back from here only where an administrator allows it.
	foreign, err := r.otherCluster(ctx, cmk, held.ID, prov)
	if err != nil {
		return nil, err
	}
	returning := o.Is(cmk.Namespace, cmk.Name) && live == "" && foreign == nil
	if returning && held.State == kms.StatePendingDeletion {
		// Deleted on purpose (deletionPolicy Delete, or scheduled before): creating the resource
		// again does not revive it unasked.
		return nil, &keystatus.Blocked{Reason: v1alpha1.ReasonAliasInUse, Message: fmt.Sprintf(
			"Alias %q is held by key %s, which the deleted CustomerMasterKey of this name left scheduled for deletion on %s: "+
				"to take it back and cancel its deletion, set spec.keyID: %s; else delete this resource and create it again with another "+
				"spec.alias, or after that date", inUse.Alias, held.ID, held.DeletionDate.UTC().Format(time.RFC3339), held.ID)}
	}
	if returning {
		if msg := mismatch(cmk, held); msg != "" {
			return nil, &keystatus.Blocked{Reason: v1alpha1.ReasonAliasInUse, Message: fmt.Sprintf(
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
	return nil, &keystatus.Blocked{Reason: v1alpha1.ReasonAliasInUse, Message: r.aliasTaken(ctx, cmk, inUse.Alias, held.ID, o, prov, live)}
}

// aliasTaken says what a namespace can do about an alias another key holds. The key's ID is
// given only when this namespace may adopt the key.
func (r *CustomerMasterKeyReconciler) aliasTaken(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, alias, id string, o kms.Owner, prov kms.Provenance, live string) string {
	recreate := "delete this resource and create it again with another spec.alias (an alias cannot change)"
	if live != "" {
		return fmt.Sprintf("Alias %q is used by the key of CustomerMasterKey %s in this namespace: %s", alias, live, recreate)
	}
	if no, err := r.mayTake(ctx, cmk, id, o, prov); err == nil && no == nil {
		return fmt.Sprintf("Alias %q is held by key %s, which this namespace may adopt: set spec.keyID: %s to adopt it, or %s", alias, id, id, recreate)
	}
	return fmt.Sprintf("Alias %q is already used by a key this namespace cannot adopt: %s", alias, recreate)
}
