package usage

import (
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

const (
	keyA = "0d0466b0-e727-4d9c-b35d-f84bb474a37f"
	keyB = "8f15dee8-1ccf-3003-8c1b-7a35225e32fd"
)

// TestIndex: consumers are found by the key they name and by the resource they name, each once
// however they name it; a consumer that changes or goes is counted where it is now, and Set
// says which keys and resources changed.
func TestIndex(t *testing.T) {
	t.Parallel()
	ix := NewIndex()
	orders := types.NamespacedName{Namespace: "shop", Name: "orders"}
	sc := Ref{Kind: "StorageClass", Name: "evs-encrypted"}
	pv := Ref{Kind: "PersistentVolume", Name: "pv-1"}
	app := Ref{Kind: "Deployment", Namespace: "shop", Name: "api"}

	ix.Set(sc, Uses{KeyIDs: []string{keyA}})
	ix.Set(pv, Uses{KeyIDs: []string{keyA, keyB}})
	ix.Set(app, Uses{CMKs: []types.NamespacedName{orders}})
	if got, want := ix.Consumers(orders, keyA), []string{"Deployment/shop/api", "PersistentVolume/-/pv-1", "StorageClass/-/evs-encrypted"}; !slices.Equal(got, want) {
		t.Errorf("orders with key A: %v, want %v", got, want)
	}
	if got := ix.Consumers(orders, ""); !slices.Equal(got, []string{"Deployment/shop/api"}) {
		t.Errorf("orders before it has a key: %v", got)
	}
	if got := ix.Consumers(types.NamespacedName{Namespace: "other", Name: "orders"}, keyB); !slices.Equal(got, []string{"PersistentVolume/-/pv-1"}) {
		t.Errorf("another namespace's orders with key B: %v (the annotation names only its own namespace's)", got)
	}

	if again := ix.Set(app, Uses{CMKs: []types.NamespacedName{orders}}); !again.empty() {
		t.Errorf("a consumer that depends on the same as before changes %+v, want nothing (no reconcile)", again)
	}
	changed := ix.Set(pv, Uses{KeyIDs: []string{keyB}})
	if !slices.Equal(changed.KeyIDs, []string{keyA, keyB}) {
		t.Errorf("a volume moved from A and B to B changes %v, want both", changed.KeyIDs)
	}
	changed = ix.Set(app, Uses{})
	if !slices.Equal(changed.CMKs, []types.NamespacedName{orders}) {
		t.Errorf("an annotation removed changes %v", changed.CMKs)
	}
	if got := ix.Consumers(orders, keyA); !slices.Equal(got, []string{"StorageClass/-/evs-encrypted"}) {
		t.Errorf("after the changes: %v", got)
	}
	ix.Set(sc, Uses{})
	if got := ix.Consumers(orders, keyA); len(got) != 0 {
		t.Errorf("every consumer gone: %v", got)
	}
	if len(ix.uses) != 1 || len(ix.byKey) != 1 || len(ix.byName) != 0 {
		t.Errorf("the index keeps what is gone: %d consumers, %d keys, %d names", len(ix.uses), len(ix.byKey), len(ix.byName))
	}
}

func TestKeyIDs(t *testing.T) {
	t.Parallel()
	got := KeyIDs(map[string]string{"everest.io/crypt-key-id": keyA, "kmsKeyId": " " + keyA + " ", "type": "SSD",
		"other": "0D0466B0-E727-4D9C-B35D-F84BB474A37F", "second": keyB, "arn": "arn:aws:kms:eu-west-1:1:key/" + keyB})
	if !slices.Equal(got, []string{keyA, keyB}) {
		t.Errorf("KeyIDs = %v, want each key ID once, no other value", got)
	}
}

func TestNamed(t *testing.T) {
	t.Parallel()
	got := Named("shop", " orders, archive,,orders ")
	want := []types.NamespacedName{{Namespace: "shop", Name: "orders"}, {Namespace: "shop", Name: "archive"}}
	if !slices.Equal(got, want) {
		t.Errorf("Named = %v, want %v", got, want)
	}
}
