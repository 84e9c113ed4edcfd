package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/usage"
)

// The consumers of keys are read, never written: StorageClasses and PersistentVolumes
// cluster-wide, and the default --usage-kinds, metadata only.
// +kubebuilder:rbac:groups=storage.k8s.io,resources=storageclasses,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=persistentvolumes,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets,verbs=get;list;watch
// +kubebuilder:rbac:groups=batch,resources=cronjobs,verbs=get;list;watch

// DefaultUsageKinds are the kinds whose objects may declare, with v1alpha1.UsesKeyAnnotation,
// the CustomerMasterKeys they depend on. Another kind needs its own get, list and watch.
var DefaultUsageKinds = []string{"deployments.apps", "statefulsets.apps", "daemonsets.apps", "cronjobs.batch"}

// maxUsageRefs is how many consumers status.usage names.
const maxUsageRefs = 10

// watchUsage indexes the consumers of keys and wakes the resources whose consumers change.
func (r *CustomerMasterKeyReconciler) watchUsage(mgr ctrl.Manager, b *builder.Builder) (*builder.Builder, error) {
	if r.Usage == nil {
		r.Usage = usage.NewIndex()
	}
	b = b.Watches(&storagev1.StorageClass{}, r.consumers(func(o client.Object) usage.Uses {
		sc, _ := o.(*storagev1.StorageClass)
		return usage.Uses{KeyIDs: usage.KeyIDs(sc.Parameters)}
	}, "StorageClass"))
	b = b.Watches(&corev1.PersistentVolume{}, r.consumers(func(o client.Object) usage.Uses {
		pv, _ := o.(*corev1.PersistentVolume)
		if pv.Spec.CSI == nil {
			return usage.Uses{}
		}
		return usage.Uses{KeyIDs: usage.KeyIDs(pv.Spec.CSI.VolumeAttributes)}
	}, "PersistentVolume"))
	kinds := r.UsageKinds
	if kinds == nil {
		kinds = DefaultUsageKinds
	}
	for _, k := range kinds {
		gvk, err := usageKind(mgr, k)
		if err != nil {
			return nil, err
		}
		obj := &metav1.PartialObjectMetadata{}
		obj.SetGroupVersionKind(gvk)
		b = b.Watches(obj, r.consumers(func(o client.Object) usage.Uses {
			return usage.Uses{CMKs: usage.Named(o.GetNamespace(), o.GetAnnotations()[v1alpha1.UsesKeyAnnotation])}
		}, gvk.Kind), builder.OnlyMetadata)
	}
	return b, nil
}

// consumerCache keeps, of the StorageClasses and PersistentVolumes the usage index watches, only
// what it reads (names, parameters, CSI attributes): 10,000 volumes then cost the manager a few
// MiB, not their whole specs.
func consumerCache() map[client.Object]cache.ByObject {
	return map[client.Object]cache.ByObject{
		&storagev1.StorageClass{}: {Transform: func(o any) (any, error) {
			sc, ok := o.(*storagev1.StorageClass)
			if !ok {
				return o, nil
			}
			return &storagev1.StorageClass{ObjectMeta: consumerMeta(sc.ObjectMeta), Parameters: sc.Parameters}, nil
		}},
		&corev1.PersistentVolume{}: {Transform: func(o any) (any, error) {
			pv, ok := o.(*corev1.PersistentVolume)
			if !ok {
				return o, nil
			}
			kept := &corev1.PersistentVolume{ObjectMeta: consumerMeta(pv.ObjectMeta)}
			if csi := pv.Spec.CSI; csi != nil {
				kept.Spec.CSI = &corev1.CSIPersistentVolumeSource{Driver: csi.Driver, VolumeHandle: csi.VolumeHandle, VolumeAttributes: csi.VolumeAttributes}
			}
			return kept, nil
		}},
	}
}

func consumerMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion}
}

// usageKind is the kind of a --usage-kinds entry, resource.group as kubectl names it.
func usageKind(mgr ctrl.Manager, resourceGroup string) (schema.GroupVersionKind, error) {
	resource, group, _ := strings.Cut(resourceGroup, ".")
	gvk, err := mgr.GetRESTMapper().KindFor(schema.GroupVersionResource{Group: group, Resource: resource})
	if err != nil {
		return gvk, fmt.Errorf("--usage-kinds %s: %w (give resource.group, as kubectl api-resources lists them)", resourceGroup, err)
	}
	return gvk, nil
}

// consumers handles the events of one kind of consumer: the index learns what the object
// depends on now (nothing, once it is gone), and every resource whose consumers changed is
// reconciled, so status.usage and the guard follow within the moment.
func (r *CustomerMasterKeyReconciler) consumers(uses func(client.Object) usage.Uses, kind string) handler.EventHandler {
	set := func(ctx context.Context, o client.Object, gone bool, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		now := usage.Uses{}
		if !gone {
			now = uses(o)
		}
		changed := r.Usage.Set(usage.Ref{Kind: kind, Namespace: o.GetNamespace(), Name: o.GetName()}, now)
		for _, req := range r.usersOf(ctx, changed) {
			q.Add(req)
		}
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			set(ctx, e.Object, false, q)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			set(ctx, e.ObjectNew, false, q)
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			set(ctx, e.Object, true, q)
		},
	}
}

// usersOf are the resources whose consumers changed: those of the keys, found by status.keyID,
// and those named.
func (r *CustomerMasterKeyReconciler) usersOf(ctx context.Context, changed usage.Uses) []reconcile.Request {
	reqs := make([]reconcile.Request, 0, len(changed.CMKs))
	for _, n := range changed.CMKs {
		reqs = append(reqs, reconcile.Request{NamespacedName: n})
	}
	for _, id := range changed.KeyIDs {
		holders, err := holdersOf(ctx, r, id)
		if err != nil {
			log.FromContext(ctx).Error(err, "Listing the resources of a key whose consumers changed", "keyID", id)
		}
		reqs = append(reqs, holders...)
	}
	return reqs
}

// countUsage records in status what depends on the resource's key now: the consumers the
// index has, and the resource's own kms.cmk.io/protects annotation.
func (r *CustomerMasterKeyReconciler) countUsage(cmk *v1alpha1.CustomerMasterKey) {
	if r.Usage == nil {
		return
	}
	refs := r.Usage.Consumers(types.NamespacedName{Namespace: cmk.Namespace, Name: cmk.Name}, cmk.Status.KeyID)
	if p := cmk.Annotations[v1alpha1.ProtectsAnnotation]; p != "" {
		refs = append(refs, protectsRef(p))
		slices.Sort(refs)
	}
	u, shown := cmk.Status.Usage, refs[:min(len(refs), maxUsageRefs)]
	if u == nil && len(refs) == 0 || u != nil && int(u.Consumers) == len(refs) && slices.Equal(u.Refs, shown) {
		return // unchanged; a key whose consumers all went keeps saying 0
	}
	now := metav1.NewTime(r.Clock.Now())
	cmk.Status.Usage = &v1alpha1.Usage{Consumers: int32(len(refs)), LastUpdateTime: &now}
	if len(shown) > 0 {
		cmk.Status.Usage.Refs = slices.Clone(shown)
	}
}

// protectsRef is the consumer a kms.cmk.io/protects value declares: APIServer/-/secrets for the
// apiserver's Secret encryption (see kubectl cmk kms-plugin), else Protects/-/<value>.
func protectsRef(value string) string {
	if value == v1alpha1.ProtectsAPIServerSecrets {
		return "APIServer/-/secrets"
	}
	return usage.Ref{Kind: "Protects", Name: value}.String()
}

// inUse reports whether the guard holds the key: something depends on it, and the resource
// does not carry the override.
func inUse(cmk *v1alpha1.CustomerMasterKey) bool {
	return cmk.Status.Usage != nil && cmk.Status.Usage.Consumers > 0 && cmk.Annotations[v1alpha1.AllowWhileInUseAnnotation] != "true"
}
