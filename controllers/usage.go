package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

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
	"github.com/cmk-operator/cmk-operator/internal/kms"
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
		kind := gvk.Kind
		if gvk.Group != "apps" && gvk.Group != "batch" && gvk.Group != "" {
			kind += "." + gvk.Group // a kind of another API group may share a name with one of these
		}
		b = b.Watches(obj, r.consumers(func(o client.Object) usage.Uses {
			return usage.Uses{CMKs: usage.Named(o.GetNamespace(), o.GetAnnotations()[v1alpha1.UsesKeyAnnotation])}
		}, kind), builder.OnlyMetadata)
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
			return &storagev1.StorageClass{ObjectMeta: consumerMeta(sc.ObjectMeta), Parameters: keyValues(sc.Parameters)}, nil
		}},
		&corev1.PersistentVolume{}: {Transform: func(o any) (any, error) {
			pv, ok := o.(*corev1.PersistentVolume)
			if !ok {
				return o, nil
			}
			kept := &corev1.PersistentVolume{ObjectMeta: consumerMeta(pv.ObjectMeta)}
			if csi := pv.Spec.CSI; csi != nil {
				if ids := keyValues(csi.VolumeAttributes); ids != nil {
					kept.Spec.CSI = &corev1.CSIPersistentVolumeSource{VolumeAttributes: ids}
				}
			}
			return kept, nil
		}},
	}
}

func consumerMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, ResourceVersion: m.ResourceVersion}
}

// keyValues keeps, of a map of parameters or attributes, the entries whose value is a key ID:
// nil when none is.
func keyValues(m map[string]string) map[string]string {
	ids := usage.KeyIDs(m)
	if len(ids) == 0 {
		return nil
	}
	kept := make(map[string]string, len(ids))
	for k, v := range m {
		if slices.Contains(ids, strings.TrimSpace(v)) {
			kept[k] = v
		}
	}
	return kept
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
// those named, and the other resources of the keys those hold (see countUsage).
func (r *CustomerMasterKeyReconciler) usersOf(ctx context.Context, changed usage.Uses) []reconcile.Request {
	reqs := make([]reconcile.Request, 0, len(changed.CMKs))
	keys := slices.Clone(changed.KeyIDs)
	for _, n := range changed.CMKs {
		reqs = append(reqs, reconcile.Request{NamespacedName: n})
		c := &v1alpha1.CustomerMasterKey{}
		if err := r.Get(ctx, n, c); err == nil && c.Status.KeyID != "" && !slices.Contains(keys, c.Status.KeyID) {
			keys = append(keys, c.Status.KeyID)
		}
	}
	for _, id := range keys {
		holders, err := holdersOf(ctx, r, id)
		if err != nil {
			log.FromContext(ctx).Error(err, "Listing the resources of a key whose consumers changed", "keyID", id)
		}
		reqs = append(reqs, holders...)
	}
	return reqs
}

// countUsage records in status what depends on the resource's key now: the consumers of the
// key, found by its ID, those declared by name on this resource or on another of its namespace
// that holds the same key (one observing it, say), and its own kms.cmk.io/protects annotation.
// Consumers of the key count only once this process verified the resource's ownership of it,
// or right to observe it (verifiedKey): a key ID anyone wrote into status reads nothing.
func (r *CustomerMasterKeyReconciler) countUsage(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) {
	if r.Usage == nil {
		return
	}
	keyID := r.verifiedKey(cmk)
	self := types.NamespacedName{Namespace: cmk.Namespace, Name: cmk.Name}
	refs := r.Usage.Consumers(self, keyID)
	if keyID != "" {
		holders, err := holdersOf(ctx, r, keyID)
		if err != nil {
			log.FromContext(ctx).Error(err, "Listing the other resources of the key", "keyID", keyID)
		}
		for _, h := range holders {
			if h.Namespace == cmk.Namespace && h.Name != cmk.Name {
				refs = append(refs, r.Usage.Consumers(h.NamespacedName, "")...)
			}
		}
	}
	if p := cmk.Annotations[v1alpha1.ProtectsAnnotation]; p != "" {
		refs = append(refs, protectsRef(p))
	}
	slices.Sort(refs)
	refs = slices.Compact(refs)
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

// verifiedKey is the key this process verified the resource's ownership (or right to observe)
// of, when status names it; "" otherwise.
func (r *CustomerMasterKeyReconciler) verifiedKey(cmk *v1alpha1.CustomerMasterKey) string {
	for _, m := range []*sync.Map{&r.owned, &r.observing} {
		if id, ok := m.Load(cmk.UID); ok && id == cmk.Status.KeyID {
			return cmk.Status.KeyID
		}
	}
	return ""
}

// stillUnused counts the key's consumers again right before a call that would stop the key:
// one that appeared since the reconcile began holds the call too.
func (r *CustomerMasterKeyReconciler) stillUnused(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, key *kms.Key) error {
	r.countUsage(ctx, cmk)
	if inUse(cmk) {
		return r.held(cmk, key, v1alpha1.ReasonKeyInUse)
	}
	return nil
}

// protectsRef is the consumer a kms.cmk.io/protects value declares: APIServer/-/secrets for the
// apiserver's Secret encryption (see kubectl cmk kms-plugin), else Protects/-/<value>, cut to
// fit a name's 253 characters (status refs hold 512 at most).
func protectsRef(value string) string {
	if value == v1alpha1.ProtectsAPIServerSecrets {
		return "APIServer/-/secrets"
	}
	if r := []rune(value); len(r) > maxProtects {
		value = string(r[:maxProtects])
	}
	return usage.Ref{Kind: "Protects", Name: value}.String()
}

// maxProtects is the longest kms.cmk.io/protects value a ref carries.
const maxProtects = 253

// inUse reports whether the guard holds the key: something depends on it, and the resource
// does not carry the override.
func inUse(cmk *v1alpha1.CustomerMasterKey) bool {
	return cmk.Status.Usage != nil && cmk.Status.Usage.Consumers > 0 && cmk.Annotations[v1alpha1.AllowWhileInUseAnnotation] != "true"
}
