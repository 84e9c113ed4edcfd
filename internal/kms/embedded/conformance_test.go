package embedded

import (
	"context"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
)

// TestConformance runs the suite every provider passes.
func TestConformance(t *testing.T) {
	t.Parallel()
	kmstest.Run(t, func(t *testing.T) kmstest.Fixture {
		f := newFixture(t)
		return kmstest.Fixture{
			Provider: f.p,
			Now:      f.clock.Now,
			Advance: func(t *testing.T, d time.Duration) {
				f.clock.Step(d)
				if _, err := f.p.ReapDue(context.Background()); err != nil {
					t.Fatal(err)
				}
			},
		}
	})
}
