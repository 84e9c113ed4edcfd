package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// A key the operator makes carries, in the KMS, its provenance (kms.Provenance): the cluster,
// the install, and the deletion policy in force. The orphan sweep (orphans.go) applies that
// policy to a key whose resource vanished without its finalizer having run; the reconciler
// keeps the policy in step with the spec, so the sweep does what the resource last asked.

// clusterNamespace names the cluster: its UID is the cluster's identity, as `kubectl get ns
// kube-system -o jsonpath='{.metadata.uid}'` shows; it lives as long as the cluster does.
const clusterNamespace = "kube-system"

// clusterID is the UID of the cluster's kube-system namespace, read once.
func (r *CustomerMasterKeyReconciler) clusterID(ctx context.Context) (string, error) {
	if id, ok := r.cluster.Load().(string); ok {
		return id, nil
	}
	ns := &corev1.Namespace{}
	if err := r.apiReader().Get(ctx, client.ObjectKey{Name: clusterNamespace}, ns); err != nil {
		return "", fmt.Errorf("reading namespace %s, whose UID names this cluster in the KMS: %w", clusterNamespace, err)
	}
	r.cluster.Store(string(ns.UID))
	return string(ns.UID), nil
}

// crd reads the CustomerMasterKey CRD's metadata afresh; nil when it is gone.
func (r *CustomerMasterKeyReconciler) crd(ctx context.Context) (*metav1.PartialObjectMetadata, error) {
	crd := &metav1.PartialObjectMetadata{}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	if err := r.apiReader().Get(ctx, client.ObjectKey{Name: CRDName}, crd); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	return crd, nil
}

// provenance is what a key made now for cmk records: read afresh, so a key made after the CRD
// was deleted and created again names the new install.
func (r *CustomerMasterKeyReconciler) provenance(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (kms.Provenance, error) {
	if _, ok := kms.As[kms.Recorder](r.KMS); !ok {
		return kms.Provenance{}, nil
	}
	cluster, err := r.clusterID(ctx)
	if err != nil {
		return kms.Provenance{}, err
	}
	crd, err := r.crd(ctx)
	switch {
	case err != nil:
		return kms.Provenance{}, fmt.Errorf("reading CRD %s, whose UID the key records: %w", CRDName, err)
	case crd == nil:
		return kms.Provenance{}, fmt.Errorf("CRD %s is gone: no key is made", CRDName)
	}
	policy, days := orphanPolicy(cmk)
	return kms.Provenance{Cluster: cluster, Install: kms.InstallID(string(crd.UID)), DeletionPolicy: policy, PendingDays: days}, nil
}

// orphanPolicy is the deletion policy a key records for its resource: what deleting the
// resource would do to the key. A protected key is never scheduled by the operator, and an
// observed one never touched, so both are recorded as retained.
func orphanPolicy(cmk *v1alpha1.CustomerMasterKey) (string, int) {
	if cmk.Spec.DeletionProtection || cmk.Spec.ManagementPolicy == v1alpha1.ManagementPolicyObserve {
		return kms.PolicyRetain, int(cmk.Spec.PendingDays)
	}
	return string(cmk.Spec.DeletionPolicy), int(cmk.Spec.PendingDays)
}

// recordedPolicy is what the KMS records of a resource's key, as last read or written.
type recordedPolicy struct {
	keyID string
	kms.Provenance
}

// keepPolicy makes the deletion policy the key's provenance records the spec's (orphanPolicy),
// so that the sweep applies what the resource last asked if it vanishes, and a resource let go
// with Retain, or protected, leaves its key recorded as retained. What the KMS records is read once per process
// and key (with the owner, in verifyOwner) and written only when the spec moved from it. A key
// without a provenance (not made by this operator, or by an earlier version) keeps none. A key
// pending deletion is left as it is: the sweep never schedules it again, and a cancel brings
// it back here.
func (r *CustomerMasterKeyReconciler) keepPolicy(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, key *kms.Key) error {
	rec, ok := kms.As[kms.Recorder](r.KMS)
	if !ok || key == nil || key.State == kms.StatePendingDeletion || key.State == kms.StateDeleted {
		return nil
	}
	known, ok := r.recorded.Load(cmk.UID)
	last, _ := known.(recordedPolicy)
	if !ok || last.keyID != key.ID {
		_, prov, err := rec.Provenance(ctx, key.ID)
		if err != nil {
			return err
		}
		last = recordedPolicy{keyID: key.ID, Provenance: prov}
		r.recorded.Store(cmk.UID, last)
	}
	policy, days := orphanPolicy(cmk)
	if last.IsZero() || last.DeletionPolicy == policy && last.PendingDays == days {
		return nil
	}
	want := last.Provenance
	want.DeletionPolicy, want.PendingDays = policy, days
	if want.Install == "" {
		// A record that lost its install (a Huawei retag that died halfway): the resource lives,
		// so the install is this one.
		current, err := r.provenance(ctx, cmk)
		if err != nil {
			return err
		}
		want.Install = current.Install
	}
	if err := rec.SetPolicy(ctx, key.ID, want); err != nil {
		return fmt.Errorf("recording deletionPolicy %s in the KMS: %w", policy, err)
	}
	log.FromContext(ctx).Info("Recorded the deletion policy in the KMS", "keyID", key.ID, "recorded", policy, "pendingDays", days)
	last.DeletionPolicy, last.PendingDays = policy, days
	r.recorded.Store(cmk.UID, last)
	return nil
}
