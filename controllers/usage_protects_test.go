package controllers

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// TestLongProtectsValue: a kms.cmk.io/protects value of 600 characters is cut in its ref, so
// status, which holds refs of 512 characters at most, keeps following the spec.
func TestLongProtectsValue(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("long"))
	h.waitPhase("long", v1alpha1.PhaseEnabled)
	h.patchMeta("long", map[string]any{"annotations": map[string]any{v1alpha1.ProtectsAnnotation: strings.Repeat("x", 600)}})
	h.patch("long", map[string]any{"description": "after a long protects"})
	h.eventually("long", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation), "status no longer written")
		g.Expect(c.Status.Usage).NotTo(BeNil())
		g.Expect(c.Status.Usage.Consumers).To(BeEquivalentTo(1))
	})
}
