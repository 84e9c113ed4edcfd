package controllers

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
)

// TestJudge holds the sweep's rules, one case each: only a key of this cluster and install,
// still its maker's, whose maker is gone from a list that covered its namespace, and which no
// resource names, is an orphan; its recorded policy decides the rest.
func TestJudge(t *testing.T) {
	t.Parallel()
	const cluster, install = "cluster-a", "install-1"
	orphan := func(change ...func(*kms.Made)) kms.Made {
		m := kms.Made{Key: kms.Key{ID: "key-1", State: kms.StateEnabled}, Token: "uid-1",
			Owner:      kms.Owner{Namespace: "team-a", Name: "orders", UID: "uid-1"},
			Provenance: kms.Provenance{Cluster: cluster, Install: install, DeletionPolicy: kms.PolicyDelete, PendingDays: 7}}
		for _, c := range change {
			c(&m)
		}
		return m
	}
	gone := live{uids: map[string]bool{"uid-2": true}, keyIDs: map[string]bool{"key-2": true}}
	for name, tc := range map[string]struct {
		m    kms.Made
		l    live
		want verdict
	}{
		"DeleteOrphan":       {orphan(), gone, scheduleOrphan},
		"RetainOrphan":       {orphan(func(m *kms.Made) { m.Provenance.DeletionPolicy = kms.PolicyRetain }), gone, retainOrphan},
		"PolicyEditedByHand": {orphan(func(m *kms.Made) { m.Provenance.DeletionPolicy = "Purge" }), gone, retainOrphan},
		"NoPendingDays":      {orphan(func(m *kms.Made) { m.Provenance.PendingDays = 0 }), gone, retainOrphan},
		"TooFewPendingDays":  {orphan(func(m *kms.Made) { m.Provenance.PendingDays = 1 }), gone, retainOrphan},
		"TooManyPendingDays": {orphan(func(m *kms.Made) { m.Provenance.PendingDays = 5000 }), gone, retainOrphan},
		"AlreadyScheduled":   {orphan(func(m *kms.Made) { m.Key.State = kms.StatePendingDeletion }), gone, scheduledOrphan},
		"EarlierInstall":     {orphan(func(m *kms.Made) { m.Provenance.Install = "install-0" }), gone, uninstalledOrphan},
		"OwnerLives":         {orphan(), live{uids: map[string]bool{"uid-1": true}}, notOrphan},
		"KeyNamedByAnother":  {orphan(), live{keyIDs: map[string]bool{"key-1": true}}, notOrphan},
		"OwnerCreatedAgain":  {orphan(), live{names: map[string]bool{kms.Named("team-a", "orders"): true}}, notOrphan},
		"OtherCluster":       {orphan(func(m *kms.Made) { m.Provenance.Cluster = "cluster-b" }), gone, notOrphan},
		"NoProvenance":       {orphan(func(m *kms.Made) { m.Provenance = kms.Provenance{} }), gone, notOrphan},
		"ClaimedSince":       {orphan(func(m *kms.Made) { m.Owner.UID = "uid-9" }), gone, notOrphan},
		"NoToken":            {orphan(func(m *kms.Made) { m.Token = "" }), gone, notOrphan},
		"NamespaceUnlisted":  {orphan(), live{namespaces: []string{"team-b"}}, notOrphan},
		"NamespaceListed":    {orphan(), live{namespaces: []string{"team-b", "team-a"}}, scheduleOrphan},
	} {
		t.Run(name, func(t *testing.T) {
			if got := judge(tc.m, cluster, install, tc.l); got != tc.want {
				t.Errorf("judge = %d, want %d", got, tc.want)
			}
		})
	}
}

// orphan deletes a resource with its finalizer taken off by hand while no manager runs, as a
// careless operator would: the finalizer never applies deletionPolicy.
func (h *harness) orphan(name string) {
	h.t.Helper()
	h.delete(name)
	h.stripFinalizers(name)
	h.waitGone(name)
}

// stripFinalizers takes the finalizer off a resource by hand, as an operator "unsticking" a
// Terminating resource or a namespace would.
func (h *harness) stripFinalizers(name string) {
	h.t.Helper()
	c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: name}}
	if err := env.Client.Patch(context.Background(), c, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`))); err != nil {
		h.t.Fatal(err)
	}
}

// ghostKey makes a key as the operator makes one, for a resource of the harness's namespace
// that does not exist, with this provenance.
func (h *harness) ghostKey(name string, p kms.Provenance) string {
	h.t.Helper()
	uid := string(uuid.NewUUID())
	k, err := h.kms.Create(context.Background(), kms.CreateRequest{Alias: "k8s/" + h.ns + "/" + name, KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: uid, Owner: kms.Owner{Namespace: h.ns, Name: name, UID: uid}, Provenance: p})
	if err != nil {
		h.t.Fatal(err)
	}
	return k.ID
}

// foreignKey is a ghostKey of another cluster's, made under its own install.
func (h *harness) foreignKey(name, policy string) string {
	h.t.Helper()
	return h.ghostKey(name, kms.Provenance{Cluster: string(uuid.NewUUID()), Install: "0123456789abcdef", DeletionPolicy: policy, PendingDays: 7})
}

// orphaned makes resources with deletionPolicy Delete, waits for their keys, then, the manager
// stopped, orphans them; it returns their key IDs.
func (h *harness) orphaned(names ...string) []string {
	h.t.Helper()
	for _, n := range names {
		h.create(h.cmk(n, deletePolicy))
	}
	ids := make([]string, len(names))
	for i, n := range names {
		ids[i] = h.waitPhase(n, v1alpha1.PhaseEnabled).Status.KeyID
	}
	h.stopManager()
	for _, n := range names {
		h.orphan(n)
	}
	return ids
}

// provenanceOf reads a key's provenance straight from the KMS.
func (h *harness) provenanceOf(keyID string) kms.Provenance {
	h.t.Helper()
	_, p, err := h.kms.Provenance(context.Background(), keyID)
	if err != nil {
		h.t.Fatal(err)
	}
	return p
}

// TestOrphanSweep orphans keys of both policies, and leaves in the same KMS keys the sweep must
// never touch: another cluster's, one made without provenance, one claimed since by a live
// resource, one of an earlier install. The sweep at the manager's start schedules the Delete
// orphan with its recorded window, with an event in its namespace, leaves the rest as they were,
// and a second sweep changes nothing.
func TestOrphanSweep(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("doomed", deletePolicy, func(c *v1alpha1.CustomerMasterKey) { c.Spec.PendingDays = 9 }), h.cmk("kept"), h.cmk("alive", deletePolicy))
	doomed := h.waitPhase("doomed", v1alpha1.PhaseEnabled).Status.KeyID
	kept := h.waitPhase("kept", v1alpha1.PhaseEnabled).Status.KeyID
	alive := h.waitPhase("alive", v1alpha1.PhaseEnabled).Status.KeyID
	if p := h.provenanceOf(doomed); p.Cluster == "" || p.DeletionPolicy != kms.PolicyDelete || p.PendingDays != 9 {
		t.Fatalf("a new key's provenance: %+v", p)
	}

	// Keys the sweep must leave, each with an owner in this namespace that does not exist.
	mine := h.provenanceOf(alive)
	otherCluster := h.ghostKey("other-cluster", kms.Provenance{Cluster: string(uuid.NewUUID()), Install: mine.Install, DeletionPolicy: kms.PolicyDelete, PendingDays: 7})
	unrecorded := h.ghostKey("unrecorded", kms.Provenance{})
	earlierInstall := h.ghostKey("earlier-install", kms.Provenance{Cluster: mine.Cluster, Install: "0000000000000000", DeletionPolicy: kms.PolicyDelete, PendingDays: 7})
	claimed := h.ghostKey("claimed", mine)
	h.create(h.cmk("claimer", keyID(claimed)))
	h.eventually("claimer", func(g Gomega, c *v1alpha1.CustomerMasterKey) { g.Expect(c.Status.KeyID).To(Equal(claimed)) })

	h.stopManager()
	h.orphan("doomed")
	h.orphan("kept")
	before := h.keyStates()
	asked := h.clock.Now()
	h.start(managerOptions{sweep: time.Hour})

	NewWithT(t).Eventually(func() kms.State { return h.kmsState(doomed) }).WithTimeout(timeout).Should(Equal(kms.StatePendingDeletion))
	if k, err := h.kms.Observe(context.Background(), doomed); err != nil || k.DeletionDate.Before(asked.Add(9*24*time.Hour)) {
		t.Errorf("the orphan's deletion date %v, %v; want 9 days after %v", k.DeletionDate, err, asked)
	}
	NewWithT(t).Eventually(func() []string { return h.events("doomed") }).WithTimeout(timeout).Should(ContainElement(v1alpha1.EventOrphanDeletionScheduled))
	for id, what := range map[string]string{kept: "the Retain orphan", alive: "a live resource's key", otherCluster: "another cluster's key",
		unrecorded: "a key without provenance", earlierInstall: "an earlier install's key", claimed: "a key claimed since"} {
		if got := h.kmsState(id); got != before[id] {
			t.Errorf("%s is %s, was %s", what, got, before[id])
		}
	}

	// The sweep again (as at the next interval) finds the orphan scheduled, and the Retain one.
	res, err := h.sweeper(env.Client).sweep(context.Background())
	if err != nil || res.scheduled != 0 || res.retained != 2 {
		t.Errorf("a second sweep: %+v, %v; want nothing scheduled, the Retain orphan and the earlier install's key retained", res, err)
	}
}

// sweeper is an orphan sweep over the harness's KMS and namespace that reads resources, the
// CRD and the cluster's namespace through reader, and calls the KMS through kms, when given.
func (h *harness) sweeper(reader client.Reader, provider ...kms.Provider) *orphanSweep {
	r := &CustomerMasterKeyReconciler{Client: env.Client, APIReader: reader, KMS: h.kms, Clock: h.clock}
	if len(provider) > 0 {
		r.KMS = provider[0]
	}
	return &orphanSweep{r: r, rec: h.kms, interval: time.Hour, namespaces: []string{h.ns}, log: logr.Discard()}
}

// refusing refuses to schedule the deletion of one key, as a KMS does for a frozen key.
type refusing struct {
	*embedded.Provider
	id string
}

func (r refusing) ScheduleDeletion(ctx context.Context, id string, days int) error {
	if id == r.id {
		return &kms.FrozenError{KeyID: id}
	}
	return r.Provider.ScheduleDeletion(ctx, id, days)
}

// TestOrphanSweepRefuses: the sweep does nothing while the CRD is being deleted, nor when it
// cannot list the resources; a key the KMS refuses to schedule (frozen) is left for the next
// sweep, and does not keep the others from theirs.
func TestOrphanSweepRefuses(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	ids := h.orphaned("doomed", "frozen")
	doomed, frozen := ids[0], ids[1]

	terminating := interceptor.NewClient(env.Client, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if err := c.Get(ctx, key, obj, opts...); err != nil || key.Name != CRDName {
				return err
			}
			now := metav1.Now()
			obj.SetDeletionTimestamp(&now)
			return nil
		}})
	if res, err := h.sweeper(terminating).sweep(context.Background()); err != nil || res != (sweepResult{skipped: true}) {
		t.Errorf("a sweep while the CRD is being deleted: %+v, %v; want nothing done", res, err)
	}
	cutShort := interceptor.NewClient(env.Client, interceptor.Funcs{
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if _, ok := list.(*v1alpha1.CustomerMasterKeyList); ok {
				return errors.New("injected: the list was cut short")
			}
			return c.List(ctx, list, opts...)
		}})
	if _, err := h.sweeper(cutShort).sweep(context.Background()); err == nil {
		t.Error("a sweep whose list of resources failed reports no error")
	}
	if got := h.kmsState(doomed); got != kms.StateEnabled {
		t.Fatalf("the orphan is %s after sweeps that must not act; want Enabled", got)
	}
	if got := h.kmsState(frozen); got != kms.StateEnabled {
		t.Fatalf("the frozen orphan is %s after sweeps that must not act; want Enabled", got)
	}
	res, err := h.sweeper(env.Client, refusing{h.kms, frozen}).sweep(context.Background())
	if err != nil || res.scheduled != 1 || res.failed != 1 {
		t.Errorf("a sweep that can act, with a frozen key: %+v, %v; want one orphan scheduled, the frozen one left", res, err)
	}
	if got := h.kmsState(doomed); got != kms.StatePendingDeletion {
		t.Errorf("the orphan beside the frozen one is %s", got)
	}
}

// TestPolicyRecordedFollowsSpec: the deletion policy the KMS records follows the spec, and a
// resource let go with Retain, changed from Delete a moment before its deletion, leaves its key
// recorded as retained, so no later sweep deletes it.
func TestPolicyRecordedFollowsSpec(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("changing", deletePolicy))
	id := h.waitPhase("changing", v1alpha1.PhaseEnabled).Status.KeyID
	h.patch("changing", map[string]any{"pendingDays": 30})
	NewWithT(t).Eventually(func() int { return h.provenanceOf(id).PendingDays }).WithTimeout(timeout).Should(Equal(30))

	h.stopManager()
	h.patch("changing", map[string]any{"deletionPolicy": "Retain"})
	h.delete("changing")
	h.start(managerOptions{})
	h.waitGone("changing")
	if p := h.provenanceOf(id); p.DeletionPolicy != kms.PolicyRetain {
		t.Errorf("the key of a resource let go with Retain records %+v", p)
	}
	if res, err := h.sweeper(env.Client).sweep(context.Background()); err != nil || res.scheduled != 0 || res.retained != 1 {
		t.Errorf("the sweep after: %+v, %v; want the key retained", res, err)
	}
	if got := h.kmsState(id); got != kms.StateEnabled {
		t.Errorf("the retained key is %s", got)
	}
}
