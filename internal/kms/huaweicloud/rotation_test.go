package huaweicloud

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

// TestRotationThroughTheOperator turns rotation on, changes its interval, puts back a rotation
// turned off in the console, survives a deletion scheduled and canceled (Huawei keeps rotation
// on meanwhile and refuses a second enable with KMS.2901), and turns it off.
func TestRotationThroughTheOperator(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	ns := newNamespace(t, "hw-rotation")
	operator.Run(t, env, ns, p)
	c := testenv.Key(ns, "rotating", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.Rotation = &v1alpha1.Rotation{Enabled: true, IntervalDays: 30}
	})
	if err := env.Client.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	settled := func(check func(g Gomega, c *v1alpha1.CustomerMasterKey)) { t.Helper(); settle(t, c, check) }
	settled(func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Rotation).To(Equal(&v1alpha1.RotationStatus{Enabled: true, IntervalDays: 30}))
	})
	id := c.Status.KeyID
	if on, days, _ := s.Rotation(id); !on || days != 30 {
		t.Fatalf("stand-in rotation: %v every %d days", on, days)
	}

	patch := func(spec string) { t.Helper(); patchSpec(t, c, spec) }
	patch(`{"rotation":{"intervalDays":200}}`)
	settled(func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Rotation.IntervalDays).To(Equal(int32(200)))
	})

	// The KMS rotates at the interval; status reports it at the next look.
	s.Advance(201 * 24 * time.Hour)
	patch(`{"description":"rotated"}`)
	settled(func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Rotation.Rotations).To(Equal(int32(1)))
		g.Expect(c.Status.Rotation.LastRotationTime).NotTo(BeNil())
		g.Expect(c.Status.Rotation.LastRotationTime.Time).To(BeTemporally("~", s.Clock.Now(), time.Minute))
	})

	// Scheduled and canceled: rotation stays on through it, and nothing is refused. The
	// rotation is read once per reconcile, not again after the state's calls, which leave it.
	s.ResetCalls()
	patch(`{"enabled":false,"deletionScheduled":true}`)
	settled(func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Phase).To(Equal(v1alpha1.PhasePendingDeletion))
	})
	if n := s.Calls()["get-key-rotation-status"]; n != 1 {
		t.Errorf("scheduling the deletion read the rotation %d times, want 1", n)
	}
	patch(`{"deletionScheduled":false,"enabled":true}`)
	settled(func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Phase).To(Equal(v1alpha1.PhaseEnabled))
		g.Expect(c.Status.Rotation.Enabled).To(BeTrue())
		g.Expect(c.Status.Conditions).To(ContainElement(HaveField("Reason", v1alpha1.ReasonAvailable)))
	})

	// Turned off in the console: turned on again at the next look.
	s.DisableRotationInConsole(id)
	patch(`{"description":"looked at again"}`)
	NewWithT(t).Eventually(func() bool { on, _, _ := s.Rotation(id); return on }).WithTimeout(30 * time.Second).Should(BeTrue())

	patch(`{"rotation":{"enabled":false}}`)
	settled(func(g Gomega, c *v1alpha1.CustomerMasterKey) { g.Expect(c.Status.Rotation.Enabled).To(BeFalse()) })
	if on, _, _ := s.Rotation(id); on {
		t.Error("rotation still on in the stand-in after spec.rotation.enabled: false")
	}
}

// TestRotationRefusals: keys Huawei cannot rotate answer unsupported, and a second enable is
// not an error.
func TestRotationRefusals(t *testing.T) {
	t.Parallel()
	p, _ := newStandIn(t)
	ctx := context.Background()
	for _, req := range []kms.CreateRequest{
		{Alias: "ext", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginExternal, Token: "t-ext"},
		{Alias: "rsa", KeySpec: "RSA_2048", KeyUsage: "SIGN_VERIFY", Origin: kms.OriginKMS, Token: "t-rsa"},
		{Alias: "ec", KeySpec: "EC_P256", KeyUsage: "SIGN_VERIFY", Origin: kms.OriginKMS, Token: "t-ec"},
	} {
		k, err := p.Create(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.SetRotation(ctx, k.ID, true, 365); !kms.IsUnsupported(err) {
			t.Errorf("%s: turning rotation on gave %v, want unsupported", req.Alias, err)
		}
	}
	k, err := p.Create(ctx, kms.CreateRequest{Alias: "sm4", KeySpec: "SM4", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "t-sm4"})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := p.SetRotation(ctx, k.ID, true, 365); err != nil {
			t.Errorf("turning rotation on (twice): %v", err)
		}
	}
	if err := kmstest.Do(p, k.ID, kmstest.Disable); err != nil {
		t.Fatal(err)
	}
	var stateErr *kms.StateError
	if err := p.SetRotation(ctx, k.ID, true, 90); !errors.As(err, &stateErr) {
		t.Errorf("changing the rotation of a disabled key: %v, want a state error", err)
	}
	if rot, err := p.Rotation(ctx, k.ID); err != nil || !rot.Enabled {
		t.Errorf("rotation of a disabled key is still read: %+v, %v", rot, err)
	}
}

// TestTagsThroughTheOperator adds, changes and removes tags, next to the owner's tags, which
// stay; and refuses more than Huawei's 10 tags with a message that counts the operator's own.
func TestTagsThroughTheOperator(t *testing.T) {
	t.Parallel()
	p, _ := newStandIn(t)
	ctx := context.Background()
	ns := newNamespace(t, "hw-tags")
	operator.Run(t, env, ns, p)
	c := testenv.Key(ns, "tagged", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.Tags = map[string]v1alpha1.TagValue{"team": "payments", "env": "prod"}
	})
	if err := env.Client.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	settled := func(check func(g Gomega, c *v1alpha1.CustomerMasterKey)) { t.Helper(); settle(t, c, check) }
	settled(func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Tags).To(Equal(map[string]string{"team": "payments", "env": "prod"}))
	})
	id := c.Status.KeyID
	owner, err := p.Owner(ctx, id)
	if err != nil || owner.UID != string(c.UID) {
		t.Fatalf("owner: %+v, %v", owner, err)
	}
	patch := func(spec string) { t.Helper(); patchSpec(t, c, spec) }
	patch(`{"tags":{"env":null,"team":"risk","cost-center":"42"}}`)
	want := map[string]string{"team": "risk", "cost-center": "42"}
	settled(func(g Gomega, c *v1alpha1.CustomerMasterKey) { g.Expect(c.Status.Tags).To(Equal(want)) })
	if got, err := p.Tags(ctx, id); err != nil || !maps.Equal(got, want) {
		t.Errorf("KMS tags %v, %v; want %v", got, err, want)
	}

	patch(`{"tags":{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6","g":"7","h":"8"}}`)
	settled(func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Conditions).To(ContainElement(And(HaveField("Type", v1alpha1.ConditionSynced),
			HaveField("Message", ContainSubstring("spec.tags can hold at most")))))
	})

	patch(`{"tags":null}`)
	settled(func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Tags).To(BeEmpty())
		g.Expect(c.Status.Conditions).To(ContainElement(HaveField("Reason", v1alpha1.ReasonAvailable)))
	})
	if got, err := p.Tags(ctx, id); err != nil || len(got) != 0 {
		t.Errorf("KMS tags after spec.tags was removed: %v, %v", got, err)
	}
	if o, err := p.Owner(ctx, id); err != nil || o != owner {
		t.Errorf("owner after the tags changed: %+v, %v; want %+v", o, err, owner)
	}
}

// settle waits until the operator has acted on c's latest spec and check holds.
func settle(t *testing.T, c *v1alpha1.CustomerMasterKey, check func(g Gomega, c *v1alpha1.CustomerMasterKey)) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(context.Background(), client.ObjectKeyFromObject(c), c)).To(Succeed())
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
		check(g, c)
	}).WithTimeout(30 * time.Second).Should(Succeed())
}

// patchSpec merges spec, a JSON object, into c's spec.
func patchSpec(t *testing.T, c *v1alpha1.CustomerMasterKey, spec string) {
	t.Helper()
	if err := env.Client.Patch(context.Background(), c, client.RawPatch("application/merge-patch+json", []byte(`{"spec":`+spec+`}`))); err != nil {
		t.Fatal(err)
	}
}
