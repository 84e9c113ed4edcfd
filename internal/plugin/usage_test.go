package plugin

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// TestOverrideDoesNotOutliveTheEmergency: disable --allow-while-in-use sets the override;
// enable takes it off again, so a later plain bulk disable skips the key, still in use.
func TestOverrideDoesNotOutliveTheEmergency(t *testing.T) {
	ns := namespace(t)
	team := testenv.Labels(map[string]string{"team": "db"})
	create(t, testenv.Key(ns, "used", team), testenv.Key(ns, "used2", team), testenv.Key(ns, "idle", team))
	settled(t, ns)
	ctx := context.Background()
	get := func(n string) *v1alpha1.CustomerMasterKey {
		c := &v1alpha1.CustomerMasterKey{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, n := range []string{"used", "used2"} {
		sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "evs-" + n + "-" + ns}, Provisioner: "p",
			Parameters: map[string]string{"k": " " + get(n).Status.KeyID + " "}} // spaces around: still counted
		if err := env.Client.Create(ctx, sc); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(ctx, sc) })
	}
	NewWithT(t).Eventually(func(g Gomega) {
		for _, n := range []string{"used", "used2"} {
			u := get(n).Status.Usage
			g.Expect(u).NotTo(BeNil())
			g.Expect(u.Consumers).To(BeEquivalentTo(1))
		}
	}).WithTimeout(30 * time.Second).Should(Succeed())

	// The emergency: used is disabled anyway, then enabled again.
	if out, err := kubectlCmk(t, "-n", ns, "disable", "used", "--allow-while-in-use", "--wait"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := kubectlCmk(t, "-n", ns, "enable", "used", "--wait"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// Weeks later, a bulk disable by label: both keys in use should be skipped.
	out, err := kubectlCmk(t, "-n", ns, "disable", "-l", "team=db", "--wait")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, ns+"/used2  SKIPPED") {
		t.Errorf("used2 not skipped:\n%s", out)
	}
	if get("used").Status.Phase == v1alpha1.PhaseDisabled {
		t.Errorf("a key in use was disabled by a plain bulk disable, because an override set once for an emergency "+
			"(annotations %v) outlived it:\n%s", get("used").Annotations, out)
	}
}
