package controllers

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/uuid"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// The tests here are tenants at work: two teams, alice in one namespace and bob in another,
// each with a Role on CustomerMasterKeys and Secrets in their own namespace only, and the
// manager running as a ServiceAccount bound to exactly the generated RBAC (config/rbac). Each
// test is one way a tenant reached another's key before keys had owners.

// world is the two tenants, their operator and its KMS.
type world struct {
	h    *harness
	a, b *tenant
}

// tenant is a user with edit rights in one namespace, talking to the apiserver as themselves.
type tenant struct {
	t    testing.TB
	user string
	ns   string
	c    client.Client
}

func newWorld(t *testing.T, opts managerOptions) *world {
	t.Helper()
	h := newHarness(t)
	nsB := "team-b-" + string(uuid.NewUUID())[:8]
	if err := env.CreateNamespace(context.Background(), nsB); err != nil {
		t.Fatal(err)
	}
	manager := h.asGeneratedRBAC()
	direct, err := client.NewWithWatch(manager, client.Options{Scheme: env.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	h.kms = h.newProvider(direct) // the embedded KMS acts with the manager's rights too
	w := &world{h: h, a: newTenant(t, "alice", h.ns, true), b: newTenant(t, "bob", nsB, true)}
	opts.config, opts.namespaces = manager, []string{nsB}
	h.start(opts)
	return w
}

// asGeneratedRBAC binds config/rbac/role.yaml, as generated, to a ServiceAccount of the KMS
// namespace (the Role's cmk-system becoming that namespace), and returns a config that
// impersonates it.
func (h *harness) asGeneratedRBAC() *rest.Config {
	h.t.Helper()
	sa := "system:serviceaccount:" + h.kmsNS + ":cmk-operator"
	subject := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: sa}}
	ctx := context.Background()
	for _, obj := range readManifests(h.t, filepath.Join("..", "config", "rbac", "role.yaml")) {
		switch obj.GetKind() {
		case "ClusterRole":
			role := &rbacv1.ClusterRole{}
			fromUnstructured(h.t, obj, role)
			role.Name += "-" + h.kmsNS
			binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role.Name}, Subjects: subject,
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name}}
			createAll(h.t, role, binding)
			h.t.Cleanup(func() { _ = env.Client.Delete(ctx, binding); _ = env.Client.Delete(ctx, role) })
		case "Role":
			role := &rbacv1.Role{}
			fromUnstructured(h.t, obj, role)
			if role.Namespace != "cmk-system" {
				h.t.Fatalf("the generated Role is for namespace %s, not the KMS namespace cmk-system", role.Namespace)
			}
			role.Namespace = h.kmsNS
			binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role.Name, Namespace: h.kmsNS}, Subjects: subject,
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}}
			createAll(h.t, role, binding)
		default:
			h.t.Fatalf("unexpected %s in role.yaml", obj.GetKind())
		}
	}
	return impersonating(sa, "system:serviceaccounts", "system:serviceaccounts:"+h.kmsNS)
}

// newTenant gives user a Role on CustomerMasterKeys (and, with secrets, Secrets) in ns.
func newTenant(t testing.TB, user, ns string, secrets bool) *tenant {
	t.Helper()
	rules := []rbacv1.PolicyRule{{APIGroups: []string{v1alpha1.GroupVersion.Group}, Resources: []string{"customermasterkeys"}, Verbs: []string{"*"}}}
	if secrets {
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"*"}})
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns}, Rules: rules}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user}}
	createAll(t, role, binding)
	c, err := client.New(impersonating(user), client.Options{Scheme: env.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return &tenant{t: t, user: user, ns: ns, c: c}
}

func impersonating(user string, groups ...string) *rest.Config {
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append(groups, "system:authenticated")}
	return cfg
}

func createAll(t testing.TB, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := env.Client.Create(context.Background(), o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

func readManifests(t testing.TB, path string) []*unstructured.Unstructured {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var objs []*unstructured.Unstructured
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			break
		}
		if len(obj.Object) > 0 {
			objs = append(objs, obj)
		}
	}
	if len(objs) == 0 {
		t.Fatalf("no manifests in %s", path)
	}
	return objs
}

func fromUnstructured(t testing.TB, u *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
		t.Fatal(err)
	}
}

// cmk is a resource of the tenant's namespace with every default the apiserver would set.
func (tn *tenant) cmk(name string, mutate ...func(*v1alpha1.CustomerMasterKey)) *v1alpha1.CustomerMasterKey {
	return testenv.Key(tn.ns, name, mutate...)
}

func (tn *tenant) tryCreate(name string, mutate ...func(*v1alpha1.CustomerMasterKey)) error {
	return tn.c.Create(context.Background(), tn.cmk(name, mutate...))
}

func (tn *tenant) create(name string, mutate ...func(*v1alpha1.CustomerMasterKey)) {
	tn.t.Helper()
	if err := tn.tryCreate(name, mutate...); err != nil {
		tn.t.Fatalf("%s creating %s: %v", tn.user, name, err)
	}
}

func (tn *tenant) patch(name string, spec map[string]any) {
	tn.t.Helper()
	c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: tn.ns}}
	if err := tn.c.Patch(context.Background(), c, rawMerge(tn.t, map[string]any{"spec": spec})); err != nil {
		tn.t.Fatalf("%s patching %s: %v", tn.user, name, err)
	}
}

func (tn *tenant) putSecret(name string, data map[string][]byte) {
	tn.t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: tn.ns}, Data: data}
	if err := tn.c.Create(context.Background(), s); err != nil {
		tn.t.Fatalf("%s creating Secret %s: %v", tn.user, name, err)
	}
}

// delete deletes the resource and waits until the operator let it go.
func (tn *tenant) delete(name string) {
	tn.t.Helper()
	c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: tn.ns}}
	if err := tn.c.Delete(context.Background(), c); err != nil {
		tn.t.Fatalf("%s deleting %s: %v", tn.user, name, err)
	}
	NewWithT(tn.t).Eventually(func() bool {
		return apierrors.IsNotFound(tn.c.Get(context.Background(), client.ObjectKeyFromObject(c), c))
	}).WithTimeout(timeout).Should(BeTrue(), "%s was not let go", name)
}

func (tn *tenant) eventually(name string, check func(g Gomega, c *v1alpha1.CustomerMasterKey)) *v1alpha1.CustomerMasterKey {
	tn.t.Helper()
	return eventuallyAs(tn.t, tn.c, client.ObjectKey{Namespace: tn.ns, Name: name}, check)
}

func (tn *tenant) waitPhase(name string, phase v1alpha1.Phase) *v1alpha1.CustomerMasterKey {
	tn.t.Helper()
	return tn.eventually(name, inPhase(phase))
}

// waitReason waits until the resource's Ready condition, for its generation, has reason.
func (tn *tenant) waitReason(name, reason string) *v1alpha1.CustomerMasterKey {
	tn.t.Helper()
	return tn.eventually(name, func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation), "observedGeneration")
		g.Expect(cond(c, v1alpha1.ConditionReady).Reason).To(Equal(reason), cond(c, v1alpha1.ConditionReady).Message)
	})
}

// seen is everything the tenant can read about one of its resources: its status and the
// events about it.
func (tn *tenant) seen(name string) string {
	tn.t.Helper()
	c := &v1alpha1.CustomerMasterKey{}
	if err := tn.c.Get(context.Background(), client.ObjectKey{Namespace: tn.ns, Name: name}, c); err != nil && !apierrors.IsNotFound(err) {
		tn.t.Fatal(err)
	}
	raw, _ := json.Marshal(c.Status)
	text := string(raw)
	var events eventsv1.EventList
	if err := env.Client.List(context.Background(), &events, client.InNamespace(tn.ns)); err != nil {
		tn.t.Fatal(err)
	}
	for _, e := range events.Items {
		if e.Regarding.Name == name {
			text += "\n" + e.Reason + ": " + e.Note
		}
	}
	return text
}

// noLeak fails when what tenant b sees about its resource names any of secrets: another
// namespace's key ID, namespace or resource.
func noLeak(t testing.TB, b *tenant, name string, secrets ...string) {
	t.Helper()
	seen := b.seen(name)
	for _, s := range secrets {
		if strings.Contains(seen, s) {
			t.Errorf("%s's %s shows %q from another namespace:\n%s", b.user, name, s, seen)
		}
	}
}

func keyID(id string) func(*v1alpha1.CustomerMasterKey) {
	return func(c *v1alpha1.CustomerMasterKey) { c.Spec.KeyID = id }
}

func alias(a string) func(*v1alpha1.CustomerMasterKey) {
	return func(c *v1alpha1.CustomerMasterKey) { c.Spec.Alias = a }
}

func scheduled(c *v1alpha1.CustomerMasterKey) {
	c.Spec.Enabled, c.Spec.DeletionScheduled = false, true
}

// stillEnabled checks, over a few resyncs, that the key stays Enabled in the KMS.
func (w *world) stillEnabled(t testing.TB, id string) {
	t.Helper()
	NewWithT(t).Consistently(func() kms.State { return w.h.kmsState(id) }).
		WithTimeout(3 * time.Second).WithPolling(100 * time.Millisecond).Should(Equal(kms.StateEnabled))
}

// 1. Takeover by key ID: a key ID copied from another namespace adopts nothing, and nothing is
// done to the key, whether its owner is alive or gone; a second resource of the owner's own
// namespace waits until the owner is gone.
func TestTenancyTakeoverByKeyID(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{syncPeriod: 500 * time.Millisecond})
	w.a.create("payments")
	x := w.a.waitPhase("payments", v1alpha1.PhaseEnabled).Status.KeyID

	w.b.create("steal", keyID(x), scheduled, deletePolicy)
	c := w.b.waitReason("steal", v1alpha1.ReasonAdoptionRefused)
	if c.Status.KeyID != "" || c.Status.Phase != "" {
		t.Errorf("a refused adoption recorded keyID %q, phase %q", c.Status.KeyID, c.Status.Phase)
	}
	if msg := cond(c, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "keys never move across namespaces") {
		t.Errorf("refusal message: %q", msg)
	}
	w.stillEnabled(t, x)
	noLeak(t, w.b, "steal", w.a.ns, "payments")
	if events := w.h.events("payments"); strings.Contains(strings.Join(events, ","), v1alpha1.EventDriftDetected) {
		t.Errorf("the owner's key flipped: %v", events)
	}
	w.a.waitPhase("payments", v1alpha1.PhaseEnabled)

	// A second resource of the owner's namespace is refused while the owner lives.
	w.a.create("twin", keyID(x), func(c *v1alpha1.CustomerMasterKey) { c.Spec.Enabled = false })
	if msg := cond(w.a.waitReason("twin", v1alpha1.ReasonAdoptionRefused), v1alpha1.ConditionReady).Message; !strings.Contains(msg, "managed by CustomerMasterKey payments") {
		t.Errorf("same-namespace refusal: %q", msg)
	}
	w.stillEnabled(t, x)

	// Deleting the thief's resource, with deletionPolicy Delete, does nothing to the key.
	w.b.delete("steal")
	w.stillEnabled(t, x)

	// With the owner gone (Retain), another namespace is still refused...
	w.a.delete("payments")
	w.b.create("steal-again", keyID(x), scheduled, deletePolicy)
	w.b.waitReason("steal-again", v1alpha1.ReasonAdoptionRefused)
	// ...and the owner's namespace may now adopt it.
	if c := w.a.waitPhase("twin", v1alpha1.PhaseDisabled); c.Status.KeyID != x {
		t.Errorf("twin adopted %q, want %s", c.Status.KeyID, x)
	}
	w.b.delete("steal-again")
	if st := w.h.kmsState(x); st != kms.StateDisabled {
		t.Errorf("the key is %s, want Disabled as twin asks", st)
	}
}

// 2. Key IDs leak: an alias conflict with another namespace's key names neither the key nor
// the namespace nor the resource, and says what to do.
func TestTenancyAliasConflictNamesNoOtherTenant(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{})
	w.a.create("alice-key", alias("common/alias"))
	x := w.a.waitPhase("alice-key", v1alpha1.PhaseEnabled).Status.KeyID

	w.b.create("bob-key", alias("common/alias"))
	c := w.b.waitReason("bob-key", v1alpha1.ReasonAliasInUse)
	if msg := cond(c, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "create it again with another spec.alias") {
		t.Errorf("the conflict does not say what to do: %q", msg)
	}
	NewWithT(t).Eventually(func() []string { return w.h.eventsIn(w.b.ns, "bob-key") }).WithTimeout(timeout).
		Should(ContainElement(v1alpha1.ReasonAliasInUse))
	noLeak(t, w.b, "bob-key", x, w.a.ns, "alice-key")
}

// 3. Planting known material: another namespace's External key waiting for material cannot be
// adopted, so no material can be imported into it from there; its owner still can.
func TestTenancyNoMaterialPlantedFromAnotherNamespace(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{importRetry: 200 * time.Millisecond})
	w.a.create("byok", testenv.External)
	owned := w.a.eventually("byok", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.ImportParameters).NotTo(BeNil())
	})
	x := owned.Status.KeyID

	// bob has the key ID and, say, the public key; he wraps material of his choosing.
	wrapped, token := wrapFor(t, owned, randomMaterial(t, 32))
	w.b.putSecret("planted", materialSecret(wrapped, token))
	w.b.create("plant", testenv.External, keyID(x), func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.KeyMaterial = &v1alpha1.KeyMaterial{SecretRef: v1alpha1.LocalSecretReference{Name: "planted"}}
	})
	c := w.b.waitReason("plant", v1alpha1.ReasonAdoptionRefused)
	if c.Status.ImportParameters != nil || c.Status.KeyID != "" {
		t.Errorf("a refused adoption published %+v for key %q", c.Status.ImportParameters, c.Status.KeyID)
	}
	NewWithT(t).Consistently(func() kms.State { return w.h.kmsState(x) }).WithTimeout(2 * time.Second).Should(Equal(kms.StatePendingImport))
	if got := w.h.events("byok"); strings.Contains(strings.Join(got, ","), v1alpha1.EventMaterialImported) {
		t.Errorf("material was imported into alice's key: %v", got)
	}

	// alice imports her own material.
	mine, mineToken := wrapFor(t, w.a.waitPhase("byok", v1alpha1.PhasePendingImport), randomMaterial(t, 32))
	w.a.putSecret("mine", materialSecret(mine, mineToken))
	w.a.patch("byok", keyMaterial("mine"))
	w.a.waitPhase("byok", v1alpha1.PhaseEnabled)
}

// 4. Squatting on aliases: k8s/<namespace>/ belongs to that namespace. The operator refuses
// another namespace's prefix itself, and the admission policy of config/admission refuses it
// at the apiserver.
func TestTenancyAliasPrefixIsReserved(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{})
	squat := "k8s/" + w.a.ns + "/payments"
	w.b.create("squat", alias(squat))
	c := w.b.waitReason("squat", v1alpha1.ReasonAliasReserved)
	if msg := cond(c, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "k8s/"+w.b.ns+"/") {
		t.Errorf("the refusal does not offer the tenant's own prefix: %q", msg)
	}
	if n := w.h.keySecrets(); n != 0 {
		t.Errorf("%d keys made for a reserved alias", n)
	}
	w.a.create("payments")
	key, err := w.h.kms.Observe(context.Background(), w.a.waitPhase("payments", v1alpha1.PhaseEnabled).Status.KeyID)
	if err != nil || key.Alias != squat {
		t.Errorf("alice's payments has alias %q (%v), want %q", key.Alias, err, squat)
	}

	installManifests(t, filepath.Join("..", "config", "admission", "alias_prefix_policy.yaml"))
	NewWithT(t).Eventually(func() error {
		err := w.b.tryCreate("squat-again", alias("K8S/"+w.a.ns+"/other"))
		if err == nil {
			_ = w.b.c.Delete(context.Background(), w.b.cmk("squat-again"))
		}
		return err
	}).WithTimeout(timeout).Should(MatchError(ContainSubstring("reserved to the resources of each namespace")))
	// A tenant's own prefix stays open.
	w.b.create("own", alias("k8s/"+w.b.ns+"/custom"))
	w.b.waitPhase("own", v1alpha1.PhaseEnabled)
}

// installManifests creates the objects of a manifest file until the test ends.
func installManifests(t testing.TB, path string) {
	t.Helper()
	for _, obj := range readManifests(t, path) {
		if err := env.Client.Create(context.Background(), obj); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), obj) })
	}
}

// 5. Re-creating a resource: delete and apply of one manifest takes back the key it retained,
// and says so; the other tenant's resource of the same name gets its own key.
func TestTenancyRecreatedResourceTakesBackItsKey(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{})
	w.a.create("orders")
	x := w.a.waitPhase("orders", v1alpha1.PhaseEnabled).Status.KeyID
	w.a.delete("orders")
	if st := w.h.kmsState(x); st != kms.StateEnabled {
		t.Fatalf("the retained key is %s", st)
	}

	w.a.create("orders")
	if c := w.a.waitPhase("orders", v1alpha1.PhaseEnabled); c.Status.KeyID != x || cond(c, v1alpha1.ConditionReady).Reason != v1alpha1.ReasonAvailable {
		t.Errorf("re-created: keyID %q (want %s), Ready %+v", c.Status.KeyID, x, cond(c, v1alpha1.ConditionReady))
	}
	NewWithT(t).Eventually(func() []string { return w.h.events("orders") }).WithTimeout(timeout).Should(ContainElement(v1alpha1.EventReclaimed))
	if n := w.h.keySecrets(); n != 1 {
		t.Errorf("%d keys in the KMS, want the one taken back", n)
	}

	w.b.create("orders")
	if c := w.b.waitPhase("orders", v1alpha1.PhaseEnabled); c.Status.KeyID == x || c.Status.KeyID == "" {
		t.Errorf("bob's orders has key %q", c.Status.KeyID)
	}
	noLeak(t, w.b, "orders", x, w.a.ns)

	// Taken back by a spec that does not match: nothing is taken, and the message says why.
	w.a.delete("orders")
	w.a.create("orders", func(c *v1alpha1.CustomerMasterKey) { c.Spec.KeySpec = v1alpha1.KeySpecSM4 })
	if c := w.a.waitReason("orders", v1alpha1.ReasonAliasInUse); c.Status.KeyID != "" ||
		!strings.Contains(cond(c, v1alpha1.ConditionReady).Message, "keySpec is AES_256, not SM4") {
		t.Errorf("mismatched take-back: keyID %q, %q", c.Status.KeyID, cond(c, v1alpha1.ConditionReady).Message)
	}
}

// 6. Mismatched adoption: nothing is recorded until the key matches, spec.keyID can be
// corrected, and deleting the resource with deletionPolicy Delete does nothing to the key.
func TestTenancyMismatchedAdoptionRecordsNothing(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{})
	w.a.create("old")
	x := w.a.waitPhase("old", v1alpha1.PhaseEnabled).Status.KeyID
	w.a.delete("old")

	w.a.create("wrong", keyID(x), deletePolicy, func(c *v1alpha1.CustomerMasterKey) { c.Spec.KeySpec = v1alpha1.KeySpecSM4 })
	if c := w.a.waitReason("wrong", v1alpha1.ReasonSpecMismatch); c.Status.KeyID != "" || c.Status.Phase != "" {
		t.Errorf("a mismatched key was recorded: keyID %q, phase %q", c.Status.KeyID, c.Status.Phase)
	}
	w.a.patch("wrong", map[string]any{"keyID": unknownKeyID})
	w.a.waitReason("wrong", v1alpha1.ReasonKeyNotFound)
	// Removing it is allowed too (here only tried: it would have a new key made).
	removal := rawMerge(t, map[string]any{"spec": map[string]any{"keyID": nil}})
	if err := w.a.c.Patch(context.Background(), w.a.cmk("wrong"), removal, client.DryRunAll); err != nil {
		t.Errorf("removing spec.keyID before adoption: %v", err)
	}
	w.a.patch("wrong", map[string]any{"keyID": x})
	w.a.waitReason("wrong", v1alpha1.ReasonSpecMismatch)
	w.a.delete("wrong")
	w.stillEnabled(t, x)

	// The other tenant fares no better with a matching spec.
	w.b.create("wrong", keyID(x), deletePolicy)
	w.b.waitReason("wrong", v1alpha1.ReasonAdoptionRefused)
	w.b.delete("wrong")
	w.stillEnabled(t, x)
}

// 7. Lookups on a tenant's behalf: key IDs and Secret names are refused at admission unless
// they have their forms; a key ID never reaches a Secret of the KMS namespace that is not a
// key; and import answers do not tell a missing Secret from one without key material.
func TestTenancyNoLookupsOnATenantsBehalf(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{})
	err := w.b.tryCreate("root", keyID("embedded-root-key"))
	if err == nil || !strings.Contains(err.Error(), "keyID must be a KMS key ID") {
		t.Errorf("keyID embedded-root-key: %v", err)
	}
	err = w.b.tryCreate("path", testenv.External, func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.KeyMaterial = &v1alpha1.KeyMaterial{SecretRef: v1alpha1.LocalSecretReference{Name: "../" + w.a.ns + "/x"}}
	})
	if err == nil || !strings.Contains(err.Error(), "secretRef.name must be the name of a Secret in this namespace") {
		t.Errorf("secretRef ../%s/x: %v", w.a.ns, err)
	}

	// A Secret of the KMS namespace with a key's name, but not a key record, is no key.
	notAKey := "0123abcd-0000-4000-8000-000000000001"
	createAll(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cmk-" + notAKey, Namespace: w.h.kmsNS},
		Data: map[string][]byte{"key.json": []byte(`{"id":"` + notAKey + `","state":"Enabled"}`)}})
	w.b.create("probe", keyID(notAKey))
	w.b.create("probe-none", keyID(unknownKeyID))
	probe := cond(w.b.waitReason("probe", v1alpha1.ReasonKeyNotFound), v1alpha1.ConditionReady).Message
	none := cond(w.b.waitReason("probe-none", v1alpha1.ReasonKeyNotFound), v1alpha1.ConditionReady).Message
	if strings.ReplaceAll(probe, notAKey, "ID") != strings.ReplaceAll(none, unknownKeyID, "ID") {
		t.Errorf("a non-key Secret answers %q, no Secret %q", probe, none)
	}

	// carol may edit CustomerMasterKeys in alice's namespace, but not read its Secrets.
	carol := newTenant(t, "carol", w.a.ns, false)
	createAll(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-password", Namespace: w.a.ns},
		Data: map[string][]byte{"password": []byte("hunter2")}})
	answers := map[string]metav1.Condition{}
	for name, secret := range map[string]string{"probe-db": "db-password", "probe-nothing": "nothing-here"} {
		if err := carol.tryCreate(name, testenv.External, func(c *v1alpha1.CustomerMasterKey) {
			c.Spec.KeyMaterial = &v1alpha1.KeyMaterial{SecretRef: v1alpha1.LocalSecretReference{Name: secret}}
		}); err != nil {
			t.Fatal(err)
		}
		c := carol.waitReason(name, v1alpha1.ReasonSecretNotFound)
		got := cond(c, v1alpha1.ConditionReady)
		got.Message = strings.ReplaceAll(got.Message, secret, "S")
		answers[secret] = got
	}
	if a, b := answers["db-password"], answers["nothing-here"]; a.Reason != b.Reason || a.Message != b.Message {
		t.Errorf("an existing Secret answers %s %q, a missing one %s %q", a.Reason, a.Message, b.Reason, b.Message)
	}
}

// 8. Derived aliases obey the alias rules, and one alias never gets two keys, even when two
// tenants' resources ask for it at the same moment.
func TestTenancyDerivedAliases(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{})
	long := strings.Repeat("l", 253)
	for _, name := range []string{"default", long, "a.b"} {
		w.a.create(name)
		w.b.create(name)
	}
	w.a.create("explicit", alias("k8s/"+w.a.ns+"/a_b"))
	aliases := map[string]string{}
	for _, tn := range []*tenant{w.a, w.b} {
		for _, name := range []string{"default", long, "a.b", "explicit"} {
			if tn == w.b && name == "explicit" {
				continue
			}
			c := tn.waitPhase(name, v1alpha1.PhaseEnabled)
			key, err := w.h.kms.Observe(context.Background(), c.Status.KeyID)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasSuffix(key.Alias, "/default") || len(key.Alias) > 255 || !strings.HasPrefix(key.Alias, "k8s/"+tn.ns+"/") {
				t.Errorf("%s/%s has alias %q", tn.ns, name, key.Alias)
			}
			if other, dup := aliases[key.Alias]; dup {
				t.Errorf("%s/%s and %s have alias %q", tn.ns, name, other, key.Alias)
			}
			aliases[key.Alias] = tn.ns + "/" + name
		}
	}

	// Two tenants' resources asking for one alias at once: one key, never two.
	for i := range 8 {
		shared := "race/" + string(uuid.NewUUID())
		reqs := []kms.CreateRequest{createRequest(w.a.cmk("r", func(c *v1alpha1.CustomerMasterKey) { c.UID = uuid.NewUUID(); c.Spec.Alias = shared }), kms.Provenance{}),
			createRequest(w.b.cmk("r", func(c *v1alpha1.CustomerMasterKey) { c.UID = uuid.NewUUID(); c.Spec.Alias = shared }), kms.Provenance{})}
		var wg sync.WaitGroup
		made := make([]error, len(reqs))
		for j, req := range reqs {
			wg.Add(1)
			go func() { defer wg.Done(); _, made[j] = w.h.kms.Create(context.Background(), req) }()
		}
		wg.Wait()
		keys := 0
		for _, req := range reqs {
			if _, err := w.h.kms.Lookup(context.Background(), req.Token); err == nil {
				keys++
			}
		}
		if keys != 1 {
			t.Errorf("round %d: alias %s got %d keys (create errors %v)", i, shared, keys, made)
		}
	}
}

// eventsIn returns the reasons of the events about a resource of namespace ns, oldest first.
func (h *harness) eventsIn(ns, name string) []string {
	h.t.Helper()
	var list eventsv1.EventList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		h.t.Fatal(err)
	}
	var reasons []string
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			reasons = append(reasons, e.Reason)
		}
	}
	return reasons
}

// A key another namespace took before keys had owners (status.keyID written by the previous
// version) is left alone: the KMS records its real owner, so the taker's resource does nothing
// to it, and deleting that resource with deletionPolicy Delete does not schedule its deletion.
func TestTenancyKeyTakenBeforeOwnersIsLeftAlone(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{syncPeriod: 500 * time.Millisecond})
	w.a.create("payments")
	x := w.a.waitPhase("payments", v1alpha1.PhaseEnabled).Status.KeyID
	w.b.create("taken", keyID(x), deletePolicy, func(c *v1alpha1.CustomerMasterKey) { c.Spec.Enabled = false })
	w.b.waitReason("taken", v1alpha1.ReasonAdoptionRefused)

	// What the previous version wrote when it adopted across namespaces.
	taken := w.b.cmk("taken")
	if err := env.Client.Status().Patch(context.Background(), taken, rawMerge(t, map[string]any{"status": map[string]any{"keyID": x}})); err != nil {
		t.Fatal(err)
	}
	c := w.b.waitReason("taken", v1alpha1.ReasonKeyOwnedElsewhere)
	if msg := cond(c, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "another namespace") {
		t.Errorf("message: %q", msg)
	}
	w.stillEnabled(t, x)
	noLeak(t, w.b, "taken", w.a.ns, "payments")
	w.b.delete("taken")
	w.stillEnabled(t, x)
	w.a.waitPhase("payments", v1alpha1.PhaseEnabled)
}

// A resource refused a key because another resource of its namespace holds it adopts the key
// as soon as that resource is gone, not at the next slow resync.
func TestTenancyRefusedAdoptionTriesAgainWhenTheOwnerGoes(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{}) // the default ten-minute resync
	w.a.create("payments")
	x := w.a.waitPhase("payments", v1alpha1.PhaseEnabled).Status.KeyID
	w.a.create("successor", keyID(x))
	w.a.waitReason("successor", v1alpha1.ReasonAdoptionRefused)
	w.a.delete("payments")
	if c := w.a.waitPhase("successor", v1alpha1.PhaseEnabled); c.Status.KeyID != x {
		t.Errorf("successor adopted %q, want %s", c.Status.KeyID, x)
	}
}
