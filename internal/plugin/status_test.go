package plugin

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// TestStatusColumns: the time left before a deletion and the rotation, as `status` shows them.
func TestStatusColumns(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }
	for want, got := range map[string]string{
		"-":         timeLeft(nil, now),
		"6d23h":     timeLeft(at(7*24*time.Hour-30*time.Minute), now),
		"0d1h":      timeLeft(at(90*time.Minute), now),
		"due":       timeLeft(at(-time.Second), now),
		"-!":        rotation(nil) + "!",
		"off":       rotation(&v1alpha1.RotationStatus{IntervalDays: 90}),
		"every 90d": rotation(&v1alpha1.RotationStatus{Enabled: true, IntervalDays: 90}),
		"every 30d, 2 so far, last 2026-11-27T12:00:00Z": rotation(&v1alpha1.RotationStatus{
			Enabled: true, IntervalDays: 30, Rotations: 2, LastRotationTime: at(0)}),
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}
