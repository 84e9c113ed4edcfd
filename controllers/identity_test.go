package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
)

// gatedCreate holds every Create until the test lets them go, so the test can change the
// resource while its key is being made.
type gatedCreate struct {
	*embedded.Provider
	entered chan struct{}
	release chan struct{}
}

func newGatedCreate(p *embedded.Provider) *gatedCreate {
	return &gatedCreate{Provider: p, entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (g *gatedCreate) Create(ctx context.Context, req kms.CreateRequest) (kms.Key, error) {
	g.entered <- struct{}{}
	<-g.release
	return g.Provider.Create(ctx, req)
}

// slowCreate makes every Create take a while, as a cloud KMS does, and says when the create of
// an alias has begun, so that edits can land while keys are being made.
type slowCreate struct {
	*embedded.Provider
	delay   time.Duration
	started sync.Map // alias → chan struct{}, closed when its Create begins
}

func (s *slowCreate) begun(alias string) chan struct{} {
	ch, _ := s.started.LoadOrStore(alias, make(chan struct{}))
	return ch.(chan struct{})
}

func (s *slowCreate) Create(ctx context.Context, req kms.CreateRequest) (kms.Key, error) {
	if ch := s.begun(req.Alias); ch != nil {
		select {
		case <-ch:
		default:
			close(ch)
		}
	}
	time.Sleep(s.delay)
	return s.Provider.Create(ctx, req)
}

func (h *harness) delete(name string) {
	h.t.Helper()
	c := &v1alpha1.CustomerMasterKey{}
	c.Name, c.Namespace = name, h.ns
	if err := env.Client.Delete(context.Background(), c); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) waitGone(name string) {
	h.t.Helper()
	NewWithT(h.t).Eventually(func() bool {
		err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: name}, &v1alpha1.CustomerMasterKey{})
		return apierrors.IsNotFound(err)
	}).WithTimeout(timeout).Should(BeTrue(), "%s was not let go", name)
}

// keyStates returns the state of every key in the harness's KMS, by key ID.
func (h *harness) keyStates() map[string]kms.State {
	h.t.Helper()
	var list corev1.SecretList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(h.kmsNS), client.HasLabels{"kms.cmk.io/embedded-key"}); err != nil {
		h.t.Fatal(err)
	}
	states := map[string]kms.State{}
	for _, s := range list.Items {
		id := strings.TrimPrefix(s.Name, "cmk-")
		states[id] = h.kmsState(id)
	}
	return states
}

func deletePolicy(c *v1alpha1.CustomerMasterKey) {
	c.Spec.DeletionPolicy = v1alpha1.DeletionPolicyDelete
}

// TestChangedWhileKeyIsCreated changes a resource while its key is being created, so the
// status write that records the key loses its race: deleted (with deletionPolicy Delete), the
// key must still be scheduled for deletion; scheduled for deletion, the resource must report
// its key pending deletion, not NotCreated.
func TestChangedWhileKeyIsCreated(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(h *harness)
	}{
		{"Deleted", func(h *harness) { h.delete("racing") }},
		{"Scheduled", func(h *harness) { h.patch("racing", schedule) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			gate := newGatedCreate(h.kms)
			h.start(managerOptions{provider: func(*embedded.Provider) kms.Provider { return gate }})
			h.create(h.cmk("racing", deletePolicy))
			<-gate.entered
			tc.change(h)
			close(gate.release)

			if tc.name == "Deleted" {
				h.waitGone("racing")
				NewWithT(t).Eventually(h.keyStates).WithTimeout(timeout).Should(
					And(HaveLen(1), HaveEach(kms.StatePendingDeletion)), "the key of a deleted resource with deletionPolicy Delete")
				return
			}
			c := h.waitPhase("racing", v1alpha1.PhasePendingDeletion)
			if r := cond(c, v1alpha1.ConditionReady); r.Reason != v1alpha1.ReasonPendingDeletion || c.Status.KeyID == "" {
				t.Errorf("Ready %+v, keyID %q", r, c.Status.KeyID)
			}
			if states := h.keyStates(); len(states) != 1 || states[c.Status.KeyID] != kms.StatePendingDeletion {
				t.Errorf("keys in the KMS: %v", states)
			}
		})
	}
}

// TestBulkChangesWhileCreating is the bulk race: rounds of resources created and at once
// deleted (deletionPolicy Delete) or scheduled for deletion. No usable key may be left without
// a resource, and no resource may say NotCreated while a key was made for it.
func TestBulkChangesWhileCreating(t *testing.T) {
	t.Parallel()
	const rounds, perRound = 3, 18
	h := newHarness(t)
	slow := &slowCreate{Provider: h.kms, delay: 50 * time.Millisecond}
	h.start(managerOptions{provider: func(*embedded.Provider) kms.Provider { return slow }})
	var scheduled []string
	for round := range rounds {
		var names []string
		for i := range perRound {
			kind := "del"
			if i >= perRound/2 {
				kind = "sch"
			}
			names = append(names, fmt.Sprintf("%s-%d-%02d", kind, round, i))
		}
		var wg sync.WaitGroup
		for i, name := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := h.cmk(name, deletePolicy)
				h.create(c)
				// A third of the edits land before the key is created, a third while it is
				// (the status write that records it then loses its race), a third after.
				switch i % 3 {
				case 1:
					select {
					case <-slow.begun(Alias(c)):
					case <-time.After(timeout):
					}
				case 2:
					h.waitPhase(name, v1alpha1.PhaseEnabled)
				}
				if strings.HasPrefix(name, "del") {
					h.delete(name)
				} else {
					h.patch(name, schedule)
				}
			}()
		}
		wg.Wait()
		for _, name := range names {
			if strings.HasPrefix(name, "sch") {
				scheduled = append(scheduled, name)
			}
		}
	}

	withKey := 0
	for _, name := range scheduled {
		c := h.eventually(name, func(g Gomega, c *v1alpha1.CustomerMasterKey) {
			g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
			g.Expect(cond(c, v1alpha1.ConditionReady).Reason).To(BeElementOf(v1alpha1.ReasonPendingDeletion, v1alpha1.ReasonNotCreated))
		})
		if cond(c, v1alpha1.ConditionReady).Reason == v1alpha1.ReasonPendingDeletion {
			withKey++
			continue
		}
		if k, err := h.kms.Lookup(context.Background(), string(c.UID)); !kms.IsNotFound(err) {
			t.Errorf("%s says NotCreated, but the KMS holds key %s (%s) made for it (%v)", name, k.ID, k.State, err)
		}
	}
	var list v1alpha1.CustomerMasterKeyList
	NewWithT(t).Eventually(func() int {
		_ = env.Client.List(context.Background(), &list, client.InNamespace(h.ns))
		return len(list.Items)
	}).WithTimeout(timeout).Should(Equal(len(scheduled)), "deleted resources let go")

	usable := 0
	for id, state := range h.keyStates() {
		if state != kms.StatePendingDeletion {
			usable++
			t.Errorf("key %s is %s, but its resource is deleted or asks for its deletion", id, state)
		}
	}
	t.Logf("%d resources scheduled (%d with a key), %d deleted; %d keys in the KMS, %d usable",
		len(scheduled), withKey, rounds*perRound-len(scheduled), len(h.keyStates()), usable)
}

// TestLostKeyIDIsFound loses the status write that records a new key's ID, as a crash
// would: the next reconcile finds the key by its creation token and says nothing of creating
// it again.
func TestLostKeyIDIsFound(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, _ := directReconciler(h)
	h.create(h.cmk("found"))
	c := h.get("found")
	if err := r.ensureMetadata(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	created, err := h.kms.Create(context.Background(), createRequest(c, kms.Provenance{})) // the status write never happened
	if err != nil {
		t.Fatal(err)
	}
	h.patch("found", map[string]any{"enabled": false})
	rec := &recordingEvents{}
	r.Recorder = rec
	reconcileOnce(t, r, h, "found")
	c = h.get("found")
	if c.Status.KeyID != created.ID || c.Status.Phase != v1alpha1.PhaseDisabled || h.keySecrets() != 1 {
		t.Errorf("status %+v, %d keys; want key %s Disabled and no other", c.Status, h.keySecrets(), created.ID)
	}
	if rec.has(v1alpha1.EventCreated) {
		t.Errorf("a key found again was reported as created: %v", rec.reasons())
	}
}

// TestKeyIDCannotBeCleared checks the apiserver keeps a recorded key ID: clearing it would
// make a deleted key's resource look as if it never had a key.
func TestKeyIDCannotBeCleared(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("kept"))
	c := h.waitPhase("kept", v1alpha1.PhaseEnabled)
	for name, status := range map[string]map[string]any{
		"cleared": {"keyID": nil},
		"changed": {"keyID": "another-key"},
	} {
		err := env.Client.Status().Patch(context.Background(), c, rawMerge(t, map[string]any{"status": status}))
		if err == nil || !strings.Contains(err.Error(), "status.keyID cannot change or be removed once recorded") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if got := h.get("kept").Status.KeyID; got != c.Status.KeyID {
		t.Errorf("keyID %s, was %s", got, c.Status.KeyID)
	}
}

// TestResourceGoneWhileKeyIsCreated has the resource disappear, finalizer and all, while its
// key is being made: Kubernetes deletes a resource whose finalizer was added while its deletion
// was under way, so the finalizer never runs (seen in TestBulkChangesWhileCreating under load).
// The reconcile that made the key finds the resource gone when it records the key, and applies
// deletionPolicy itself: Delete schedules the key's deletion; Retain keeps it.
func TestResourceGoneWhileKeyIsCreated(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		policy func(*v1alpha1.CustomerMasterKey)
		want   kms.State
	}{
		{"Delete", deletePolicy, kms.StatePendingDeletion},
		{"Retain", func(*v1alpha1.CustomerMasterKey) {}, kms.StateEnabled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			gate := newGatedCreate(h.kms)
			h.start(managerOptions{provider: func(*embedded.Provider) kms.Provider { return gate }})
			h.create(h.cmk("vanishing", tc.policy))
			<-gate.entered
			h.delete("vanishing")
			c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "vanishing"}}
			if err := env.Client.Patch(context.Background(), c, client.RawPatch(types.MergePatchType,
				[]byte(`{"metadata":{"finalizers":null}}`))); err != nil {
				t.Fatal(err)
			}
			h.waitGone("vanishing")
			close(gate.release)
			NewWithT(t).Eventually(h.keyStates).WithTimeout(timeout).Should(
				And(HaveLen(1), HaveEach(tc.want)), "the key made for a resource gone meanwhile, deletionPolicy "+tc.name)
		})
	}
}
