package huaweicloud

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/controllers"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// TestOperatorAdoptsKeyScheduledInConsole runs the whole operator against the stand-in: a key
// scheduled for deletion outside Kubernetes is adopted by ID and its deletion canceled, and a
// new resource gets a key created, tagged and enabled.
func TestOperatorAdoptsKeyScheduledInConsole(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	consoleID, err := s.CreateKeyInConsole("console/app")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ScheduleDeletion(ctx, consoleID, 7); err != nil {
		t.Fatal(err)
	}
	// Keys made outside the operator are adopted only where an administrator allows it.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "hw", Labels: map[string]string{controllers.AllowAdoptionLabel: "true"}}}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	operator.Run(t, env, "hw", p)

	adopted := testenv.Key("hw", "adopted", func(c *v1alpha1.CustomerMasterKey) { c.Spec.KeyID, c.Spec.Enabled = consoleID, false })
	created := testenv.Key("hw", "created")
	for _, c := range []*v1alpha1.CustomerMasterKey{adopted, created} {
		if err := env.Client.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	phase := func(name string) func(g Gomega) v1alpha1.Phase {
		return func(g Gomega) v1alpha1.Phase {
			c := &v1alpha1.CustomerMasterKey{}
			g.Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: "hw", Name: name}, c)).To(Succeed())
			g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
			return c.Status.Phase
		}
	}
	NewWithT(t).Eventually(phase("adopted")).WithTimeout(30 * time.Second).Should(Equal(v1alpha1.PhaseDisabled))
	NewWithT(t).Eventually(phase("created")).WithTimeout(30 * time.Second).Should(Equal(v1alpha1.PhaseEnabled))
	if k, err := p.Observe(ctx, consoleID); err != nil || k.State != kms.StateDisabled {
		t.Errorf("the adopted key in the KMS: %+v (%v), want Disabled", k, err)
	}
	if s.Unsigned() != 0 {
		t.Errorf("%d unsigned requests", s.Unsigned())
	}
}
