package controllers

import (
	"context"
	"maps"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
)

// TestRotation turns rotation on, lets the key rotate at its interval on the fake clock,
// changes the interval, puts back rotation turned off outside Kubernetes, and turns it off.
func TestRotation(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("rotating", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.Rotation = &v1alpha1.Rotation{Enabled: true, IntervalDays: 30}
	}))
	c := h.eventually("rotating", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Rotation).To(Equal(&v1alpha1.RotationStatus{Enabled: true, IntervalDays: 30}))
		g.Expect(cond(c, v1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionTrue))
	})
	id := c.Status.KeyID
	ctx := context.Background()
	ciphertext, err := h.kms.Encrypt(ctx, id, []byte("encrypted before the rotation"))
	if err != nil {
		t.Fatal(err)
	}

	// At the interval the KMS rotates the key, and status follows.
	h.clock.Step(30*24*time.Hour + time.Minute)
	rotatedAt := h.clock.Now()
	h.eventually("rotating", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Rotation).NotTo(BeNil())
		g.Expect(c.Status.Rotation.Rotations).To(Equal(int32(1)))
		g.Expect(c.Status.Rotation.LastRotationTime).NotTo(BeNil())
		g.Expect(c.Status.Rotation.LastRotationTime.Time).To(BeTemporally("~", rotatedAt, time.Minute))
	})
	if plain, err := h.kms.Decrypt(ctx, id, ciphertext); err != nil || string(plain) != "encrypted before the rotation" {
		t.Errorf("data encrypted before the rotation: %q, %v", plain, err)
	}

	h.patch("rotating", map[string]any{"rotation": map[string]any{"intervalDays": 90}})
	h.eventually("rotating", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Rotation.IntervalDays).To(Equal(int32(90)))
	})
	if rot := h.rotation(id); !rot.Enabled || rot.IntervalDays != 90 {
		t.Errorf("KMS rotation after the interval changed: %+v", rot)
	}

	// Turned off in the "console" (another process's write), rotation is turned on again.
	console := h.newProvider(env.Client)
	if err := console.SetRotation(ctx, id, false, 0); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func() []string { return h.events("rotating") }).WithTimeout(timeout).Should(ContainElement(v1alpha1.EventDriftDetected))
	NewWithT(t).Eventually(func() bool { return h.rotation(id).Enabled }).WithTimeout(timeout).Should(BeTrue())

	// Removed from the spec, rotation stops, and status no longer speaks of it.
	h.patch("rotating", map[string]any{"rotation": nil})
	h.eventually("rotating", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Rotation).To(BeNil())
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
	})
	if rot := h.rotation(id); rot.Enabled {
		t.Errorf("rotation still on in the KMS after spec.rotation was removed: %+v", rot)
	}
}

// TestRotationWaitsForAnEnabledKey: a key created disabled gets its rotation before it is
// disabled, and one whose rotation changes while disabled gets it once enabled.
func TestRotationWaitsForAnEnabledKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("quiet", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.Enabled = false
		c.Spec.Rotation = &v1alpha1.Rotation{Enabled: true, IntervalDays: 60}
	}))
	c := h.waitPhase("quiet", v1alpha1.PhaseDisabled)
	if rot := h.rotation(c.Status.KeyID); !rot.Enabled || rot.IntervalDays != 60 {
		t.Errorf("rotation of a key created disabled: %+v", rot)
	}
	h.patch("quiet", map[string]any{"rotation": map[string]any{"intervalDays": 120}})
	h.eventually("quiet", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
		g.Expect(cond(c, v1alpha1.ConditionReady).Message).To(ContainSubstring("spec.rotation takes effect once the key is enabled"))
	})
	h.patch("quiet", enable)
	h.eventually("quiet", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Rotation).NotTo(BeNil())
		g.Expect(c.Status.Rotation.IntervalDays).To(Equal(int32(120)))
		g.Expect(cond(c, v1alpha1.ConditionReady).Status).To(Equal(metav1.ConditionTrue))
	})
}

// TestTags adds, changes and removes tags, puts back tags changed outside Kubernetes, and
// never touches the key's owner.
func TestTags(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("tagged", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.Tags = map[string]v1alpha1.TagValue{"team": "payments", "env": "prod"}
	}))
	c := h.eventually("tagged", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Tags).To(Equal(map[string]string{"team": "payments", "env": "prod"}))
	})
	id := c.Status.KeyID
	owner, err := h.kms.Owner(context.Background(), id)
	if err != nil || owner.UID != string(c.UID) {
		t.Fatalf("owner of the key: %+v, %v", owner, err)
	}

	h.patch("tagged", map[string]any{"tags": map[string]any{"env": nil, "team": "risk", "cost-center": "42"}})
	want := map[string]string{"team": "risk", "cost-center": "42"}
	h.eventually("tagged", func(g Gomega, c *v1alpha1.CustomerMasterKey) { g.Expect(c.Status.Tags).To(Equal(want)) })
	if got := h.tags(id); !maps.Equal(got, want) {
		t.Errorf("KMS tags %v, want %v", got, want)
	}

	console := h.newProvider(env.Client)
	if err := console.SetTags(context.Background(), id, map[string]string{"team": "someone-else"}); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func() map[string]string { return h.tags(id) }).WithTimeout(timeout).Should(Equal(want))
	NewWithT(t).Eventually(func() []string { return h.events("tagged") }).WithTimeout(timeout).Should(ContainElement(v1alpha1.EventDriftDetected))

	h.patch("tagged", map[string]any{"tags": nil})
	h.eventually("tagged", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Tags).To(BeEmpty())
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
	})
	if got := h.tags(id); len(got) != 0 {
		t.Errorf("KMS tags after spec.tags was removed: %v", got)
	}
	if o, err := h.kms.Owner(context.Background(), id); err != nil || o != owner {
		t.Errorf("owner after the tags changed: %+v, %v; want %+v", o, err, owner)
	}
}

func (h *harness) rotation(id string) kms.Rotation {
	h.t.Helper()
	rot, err := h.kms.Rotation(context.Background(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	return rot
}

func (h *harness) tags(id string) map[string]string {
	h.t.Helper()
	tags, err := h.kms.Tags(context.Background(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	return tags
}

// failingRotation is a provider whose rotation cannot be read.
type failingRotation struct{ *embedded.Provider }

func (failingRotation) Rotation(context.Context, string) (kms.Rotation, error) {
	return kms.Rotation{}, &kms.UnsupportedError{Reason: "rotation status refused"}
}

// TestFailedRotationReadHoldsUpOnlyRotation: a key whose rotation cannot be read still follows
// the spec's state (its deletion is scheduled), and the failure is reported.
func TestFailedRotationReadHoldsUpOnlyRotation(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{provider: func(p *embedded.Provider) kms.Provider { return failingRotation{p} }})
	h.create(h.cmk("unreadable", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.Rotation = &v1alpha1.Rotation{Enabled: true, IntervalDays: 30}
	}))
	h.eventually("unreadable", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Phase).To(Equal(v1alpha1.PhaseEnabled))
		g.Expect(cond(c, v1alpha1.ConditionSynced).Message).To(ContainSubstring("rotation status refused"))
	})
	h.patch("unreadable", schedule)
	h.waitPhase("unreadable", v1alpha1.PhasePendingDeletion)
}
