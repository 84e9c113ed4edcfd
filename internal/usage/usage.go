// Package usage is the index of what depends on each key: the consumers the operator finds in
// the cluster (StorageClasses and PersistentVolumes that name a key ID, objects annotated
// kms.cmk.io/uses-key with CustomerMasterKey names), by key ID and by CustomerMasterKey. It
// keeps no object, only each consumer's reference and what it names, so that 10,000 volumes
// cost little memory; it is safe for concurrent use.
package usage

import (
	"slices"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Ref is one consumer: Kind/namespace/name, "-" as the namespace of a cluster-scoped object.
type Ref struct{ Kind, Namespace, Name string }

func (r Ref) String() string {
	ns := r.Namespace
	if ns == "" {
		ns = "-"
	}
	return r.Kind + "/" + ns + "/" + r.Name
}

// Uses is what one consumer depends on: keys by ID, and CustomerMasterKeys by namespace and
// name (an annotation names resources of its own namespace).
type Uses struct {
	KeyIDs []string
	CMKs   []types.NamespacedName
}

func (u Uses) empty() bool { return len(u.KeyIDs) == 0 && len(u.CMKs) == 0 }

// Index holds the consumers of every key. A key has few consumers, so each one's are a slice:
// 10,000 keys of one volume each cost no map apiece.
type Index struct {
	mu     sync.RWMutex
	uses   map[Ref]Uses
	byKey  map[string][]Ref
	byName map[types.NamespacedName][]Ref
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{uses: map[Ref]Uses{}, byKey: map[string][]Ref{}, byName: map[types.NamespacedName][]Ref{}}
}

// Set records what ref depends on now (nothing: it is gone, or names no key), and returns what
// it depended on before or depends on now: the keys and resources whose usage changed; nothing
// when it depends on the same as before (a Deployment's status changing, say, every few seconds).
func (ix *Index) Set(ref Ref, now Uses) (changed Uses) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	before := ix.uses[ref]
	if slices.Equal(before.KeyIDs, now.KeyIDs) && slices.Equal(before.CMKs, now.CMKs) {
		return Uses{}
	}
	for _, id := range before.KeyIDs {
		drop(ix.byKey, id, ref)
	}
	for _, n := range before.CMKs {
		drop(ix.byName, n, ref)
	}
	if now.empty() {
		delete(ix.uses, ref)
	} else {
		ix.uses[ref] = now
	}
	for _, id := range now.KeyIDs {
		add(ix.byKey, id, ref)
	}
	for _, n := range now.CMKs {
		add(ix.byName, n, ref)
	}
	return Uses{KeyIDs: union(before.KeyIDs, now.KeyIDs), CMKs: union(before.CMKs, now.CMKs)}
}

// Consumers lists, sorted as strings, the consumers of the resource of this namespace and name
// whose key is keyID ("" before it has one): those naming the key, and those naming the resource.
func (ix *Index) Consumers(cmk types.NamespacedName, keyID string) []string {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	refs := ix.byName[cmk]
	if keyID != "" {
		refs = append(slices.Clone(refs), ix.byKey[keyID]...)
	}
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		out = append(out, r.String())
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func add[K comparable](m map[K][]Ref, k K, r Ref) {
	if !slices.Contains(m[k], r) {
		m[k] = append(m[k], r)
	}
}

func drop[K comparable](m map[K][]Ref, k K, r Ref) {
	if refs := slices.DeleteFunc(m[k], func(x Ref) bool { return x == r }); len(refs) > 0 {
		m[k] = refs
	} else {
		delete(m, k)
	}
}

func union[T comparable](a, b []T) []T {
	out := slices.Clone(a)
	for _, x := range b {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// KeyIDs are the values of m that are key IDs (StorageClass parameters, a CSI volume's
// attributes): a driver's parameter for the key may have any name (Huawei EVS
// everest.io/crypt-key-id, AWS EBS kmsKeyId), so the values are what is looked at.
func KeyIDs(m map[string]string) []string {
	var ids []string
	for _, v := range m {
		if v = strings.TrimSpace(v); kms.ValidKeyID(v) && !slices.Contains(ids, v) {
			ids = append(ids, v)
		}
	}
	slices.Sort(ids)
	return ids
}

// Named are the CustomerMasterKeys of namespace a kms.cmk.io/uses-key value names: names
// separated by commas, spaces around them ignored.
func Named(namespace, value string) []types.NamespacedName {
	var out []types.NamespacedName
	for name := range strings.SplitSeq(value, ",") {
		if name = strings.TrimSpace(name); name != "" {
			n := types.NamespacedName{Namespace: namespace, Name: name}
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}
