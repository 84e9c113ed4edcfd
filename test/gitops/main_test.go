// Package gitops checks that GitOps engines read a CustomerMasterKey's health as the operator
// means it: Argo CD through config/argocd/health.lua, run as Argo CD runs it; Flux through its
// own apply-and-wait code (fluxcd/pkg/ssa and its kstatus); and `kubectl wait`. Every test runs
// against a real kube-apiserver with the whole operator. It is a module of its own so that
// Flux and gopher-lua are dependencies of these tests only, not of the operator.
package gitops

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/internal/testenv"
	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

var cmkGVK = schema.GroupVersionKind{Group: "kms.cmk.io", Version: "v1alpha1", Kind: "CustomerMasterKey"}

// missingKeyID names no key of any KMS the tests start.
const missingKeyID = "0d0466b0-e727-4d9c-b35d-f84bb474a37f"

var namespaces atomic.Int32

// namespace creates a namespace for one test's keys.
func namespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := fmt.Sprintf("%s-%d", prefix, namespaces.Add(1))
	if err := env.CreateNamespace(t.Context(), ns); err != nil {
		t.Fatal(err)
	}
	return ns
}

// withOperator creates a namespace and runs the whole operator for it until the test ends.
func withOperator(t *testing.T, prefix string) string {
	t.Helper()
	ns := namespace(t, prefix)
	operator.Start(t, env, ns, ns+"-kms")
	return ns
}

// cmk is a CustomerMasterKey as it would stand in Git: spec as JSON.
func cmk(ns, name, spec string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(cmkGVK)
	u.SetNamespace(ns)
	u.SetName(name)
	s, err := unstructuredJSON(spec)
	if err != nil {
		panic(err)
	}
	u.Object["spec"] = s
	return u
}

func unstructuredJSON(s string) (map[string]any, error) {
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON([]byte(`{"apiVersion":"v1","kind":"X","spec":` + s + `}`)); err != nil {
		return nil, err
	}
	return u.Object["spec"].(map[string]any), nil
}

// Specs of the states that matter.
const (
	specEnabled   = `{}`
	specDisabled  = `{"enabled":false}`
	specScheduled = `{"enabled":false,"deletionScheduled":true}`
	specExternal  = `{"origin":"External"}`
	specMissing   = `{"keyID":"` + missingKeyID + `"}`
)

// get reads a key from the apiserver as GitOps engines do: unstructured.
func get(t *testing.T, ns, name string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(cmkGVK)
	if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
		t.Fatal(err)
	}
	return u
}

// create creates keys as `kubectl create` would.
func create(t *testing.T, keys ...*unstructured.Unstructured) {
	t.Helper()
	for _, k := range keys {
		if err := env.Client.Create(t.Context(), k.DeepCopy()); err != nil {
			t.Fatal(err)
		}
	}
}

// setSpec merges spec into a key's spec, as an edit in Git would.
func setSpec(t *testing.T, ns, name, spec string) {
	t.Helper()
	patch := client.RawPatch("application/merge-patch+json", []byte(`{"spec":`+spec+`}`))
	if err := env.Client.Patch(t.Context(), cmk(ns, name, `{}`), patch); err != nil {
		t.Fatal(err)
	}
}

// condition is a condition of u, or nil.
func condition(u *unstructured.Unstructured, typ string) map[string]any {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == typ {
			return m
		}
	}
	return nil
}

// eventually polls f every 100ms until it returns true, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, f func() (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	last := ""
	for {
		ok, state := f()
		if ok {
			return
		}
		last = state
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %s; last: %s", what, timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func describe(u *unstructured.Unstructured) string {
	st, _, _ := unstructured.NestedMap(u.Object, "status")
	return fmt.Sprintf("generation %d, status %v", u.GetGeneration(), st)
}
