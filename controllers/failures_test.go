package controllers

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// flaky fails the next Observe or CancelDeletion calls with a transient error: the counters
// say how many (negative: none).
type flaky struct {
	*embedded.Provider
	failObserve, failCancel atomic.Int32
}

var errTransient = errors.New("503 service unavailable")

func (f *flaky) Observe(ctx context.Context, id string) (kms.Key, error) {
	if f.failObserve.Add(-1) >= 0 {
		return kms.Key{}, errTransient
	}
	return f.Provider.Observe(ctx, id)
}

func (f *flaky) CancelDeletion(ctx context.Context, id string) error {
	if f.failCancel.Add(-1) >= 0 {
		return errTransient
	}
	return f.Provider.CancelDeletion(ctx, id)
}

// flakyReconciler is a direct reconciler on a KMS that fails calls when the test says so.
func flakyReconciler(h *harness) (*CustomerMasterKeyReconciler, *flaky) {
	r, _ := directReconciler(h)
	f := &flaky{Provider: h.kms}
	f.failObserve.Store(-1)
	f.failCancel.Store(-1)
	r.KMS = f
	return r, f
}

func reconcileErr(r *CustomerMasterKeyReconciler, h *harness, name string) error {
	_, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: client.ObjectKey{Namespace: h.ns, Name: name}})
	return err
}

// reconcileAll reconciles a resource with a direct reconciler until it has surely settled.
func reconcileAll(t *testing.T, r *CustomerMasterKeyReconciler, h *harness, name string) *v1alpha1.CustomerMasterKey {
	t.Helper()
	for i := 0; i < 6; i++ {
		reconcileOnce(t, r, h, name)
	}
	return h.get(name)
}

// TestFailedReadKeepsImportParameters fails one read of a key waiting for material: status
// keeps what it knew (a failed read says nothing about the key), so the import parameters the
// user is wrapping material with are not replaced afterwards.
func TestFailedReadKeepsImportParameters(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, f := flakyReconciler(h)
	h.create(h.cmk("byok", testenv.External))
	c := reconcileAll(t, r, h, "byok")
	if c.Status.Phase != v1alpha1.PhasePendingImport || c.Status.ImportParameters == nil {
		t.Fatalf("setup: %+v", c.Status)
	}
	token := c.Status.ImportParameters.ImportToken

	f.failObserve.Store(1)
	if err := reconcileErr(r, h, "byok"); err == nil {
		t.Fatal("expected the transient error")
	}
	c = h.get("byok")
	if c.Status.Phase != v1alpha1.PhasePendingImport || c.Status.ImportParameters == nil {
		t.Errorf("after one failed Observe: phase %s, importParameters %v (want PendingImport, kept)", c.Status.Phase, c.Status.ImportParameters)
	}
	c = reconcileAll(t, r, h, "byok")
	if c.Status.ImportParameters == nil || c.Status.ImportParameters.ImportToken != token {
		t.Errorf("import parameters replaced after a transient Observe failure: the user's wrapped material is now refused")
	}
}

// TestFailedReadKeepsWindow fails one read of a key pending deletion: the recorded window
// stays, so the deletion is not canceled and scheduled again for nothing.
func TestFailedReadKeepsWindow(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, f := flakyReconciler(h)
	h.create(h.cmk("w"))
	reconcileAll(t, r, h, "w")
	h.patch("w", schedule)
	c := reconcileAll(t, r, h, "w")
	date := c.Status.DeletionDate.Time
	h.clock.Step(time.Hour)

	f.failObserve.Store(1)
	_ = reconcileErr(r, h, "w")
	c = h.get("w")
	t.Logf("after one failed Observe: phase=%s pendingDays=%d deletionDate=%v Ready=%s", c.Status.Phase, c.Status.PendingDays, c.Status.DeletionDate, cond(c, v1alpha1.ConditionReady).Status)
	c = reconcileAll(t, r, h, "w")
	if !c.Status.DeletionDate.Time.Equal(date) {
		t.Errorf("deletion rescheduled from %v to %v because of a transient Observe error", date, c.Status.DeletionDate.Time)
	}
}

// TestFailedRescheduleKeepsTrying schedules a key's deletion in the console with 7 days while
// the spec asks for 30, and fails the cancel that starts the rescheduling once: status then
// shows the key pending with no window, which must still be scheduled again, not accepted.
func TestFailedRescheduleKeepsTrying(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, f := flakyReconciler(h)
	h.create(h.cmk("early"))
	c := reconcileAll(t, r, h, "early")
	id := c.Status.KeyID
	if err := h.kms.ScheduleDeletion(context.Background(), id, 7); err != nil { // console, 7 days
		t.Fatal(err)
	}
	h.patch("early", map[string]any{"enabled": false, "deletionScheduled": true, "pendingDays": 30})
	f.failCancel.Store(1)
	_ = reconcileErr(r, h, "early")
	reconcileAll(t, r, h, "early")
	k, _ := h.kms.Observe(context.Background(), id)
	if earliest := h.clock.Now().Add(30 * day); k.DeletionDate.Before(earliest.Add(-time.Minute)) {
		t.Errorf("key deleted at %v, %v earlier than spec.pendingDays 30 allows", k.DeletionDate, earliest.Sub(k.DeletionDate))
	}
}

// TestDeletionCarriesOutLastSpec schedules a deletion with 7 days, then changes the spec (a
// longer window; a cancel with deletionPolicy Retain) and deletes the resource before the
// operator sees the edit: the finalizer carries out the last spec before letting go.
func TestDeletionCarriesOutLastSpec(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit []map[string]any
		want func(k kms.Key, now time.Time) bool
	}{
		{"LongerWindow", []map[string]any{cancel, {"deletionScheduled": true, "pendingDays": 30}}, func(k kms.Key, now time.Time) bool {
			return !k.DeletionDate.Before(now.Add(30*day - time.Minute))
		}},
		{"CanceledRetain", []map[string]any{{"deletionScheduled": false, "enabled": true, "deletionPolicy": "Retain"}}, func(k kms.Key, _ time.Time) bool {
			return k.State != kms.StatePendingDeletion
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			r, _ := directReconciler(h)
			h.create(h.cmk("fin", deletePolicy))
			reconcileAll(t, r, h, "fin")
			h.patch("fin", schedule)
			c := reconcileAll(t, r, h, "fin")
			id := c.Status.KeyID
			for _, e := range tc.edit {
				h.patch("fin", e)
			}
			h.delete("fin")
			for i := 0; i < 3; i++ {
				_ = reconcileErr(r, h, "fin")
			}
			h.waitGone("fin")
			k, _ := h.kms.Observe(context.Background(), id)
			if !tc.want(k, h.clock.Now()) {
				t.Errorf("last spec %v, resource deleted: key %s, deletion date %v (now %v)", tc.edit, k.State, k.DeletionDate, h.clock.Now())
			}
		})
	}
}

// TestFailedReadIsNotDeleted fails one read of an Enabled key: status must not call it Deleted.
func TestFailedReadIsNotDeleted(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, f := flakyReconciler(h)
	h.create(h.cmk("rd"))
	reconcileAll(t, r, h, "rd")
	f.failObserve.Store(1)
	_ = reconcileErr(r, h, "rd")
	c := h.get("rd")
	if c.Status.Phase == v1alpha1.PhaseDeleted && cond(c, v1alpha1.ConditionReady).Status == "True" {
		t.Errorf("after a 503 from the KMS: phase %s with Ready=True (%s)", c.Status.Phase, cond(c, v1alpha1.ConditionReady).Message)
	}
}

// TestOwnKeyBeforeAdoption loses the status write of a created key, then sets spec.keyID to
// another key: the resource keeps its own key (adopting would orphan it), and deleting the
// resource applies deletionPolicy Delete to it.
func TestOwnKeyBeforeAdoption(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, _ := directReconciler(h)
	other := h.outsideKey("AES_256", "ENCRYPT_DECRYPT", "")
	h.create(h.cmk("lost", deletePolicy))
	c := h.get("lost")
	made, err := h.kms.Create(context.Background(), createRequest(c, kms.Provenance{})) // the create whose status write was lost
	if err != nil {
		t.Fatal(err)
	}
	h.patch("lost", map[string]any{"keyID": other})
	reconcileAll(t, r, h, "lost")
	h.delete("lost")
	for i := 0; i < 3; i++ {
		_ = reconcileErr(r, h, "lost")
	}
	h.waitGone("lost")
	if st := h.kmsState(made.ID); st != kms.StatePendingDeletion {
		t.Errorf("key %s made for the resource is %s after deleting it with deletionPolicy Delete: orphaned", made.ID, st)
	}
}

// consoleRace schedules the key's deletion with 7 days in the console just before the
// operator's own ScheduleDeletion reaches the KMS (which is idempotent on a key already
// pending deletion).
type consoleRace struct {
	*embedded.Provider
	armed atomic.Bool
}

func (c *consoleRace) ScheduleDeletion(ctx context.Context, id string, days int) error {
	if c.armed.Swap(false) {
		if err := c.Provider.ScheduleDeletion(ctx, id, 7); err != nil {
			return err
		}
	}
	return c.Provider.ScheduleDeletion(ctx, id, days)
}

// TestScheduleRaceRecordsNoWindow has the console schedule a 7-day deletion a moment before the
// operator's 30-day one, which the KMS then answers as "already pending": the window is recorded
// only when the date read back follows it, so the deletion is scheduled again.
func TestScheduleRaceRecordsNoWindow(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, _ := directReconciler(h)
	cr := &consoleRace{Provider: h.kms}
	r.KMS = cr
	h.create(h.cmk("race"))
	reconcileAll(t, r, h, "race")
	cr.armed.Store(true)
	h.patch("race", map[string]any{"enabled": false, "deletionScheduled": true, "pendingDays": 30})
	c := reconcileAll(t, r, h, "race")
	k, _ := h.kms.Observe(context.Background(), c.Status.KeyID)
	if earliest := h.clock.Now().Add(30 * day); k.DeletionDate.Before(earliest.Add(-time.Minute)) {
		t.Errorf("status.pendingDays %d, but the key is deleted on %v, %v before spec.pendingDays 30 allows",
			c.Status.PendingDays, k.DeletionDate, earliest.Sub(k.DeletionDate))
	}
}

// roundingKMS reports deletion dates rounded down to the start of their day, as a KMS whose
// reference does not say how it computes the date might.
type roundingKMS struct{ *embedded.Provider }

func (k roundingKMS) Observe(ctx context.Context, id string) (kms.Key, error) {
	key, err := k.Provider.Observe(ctx, id)
	key.DeletionDate = key.DeletionDate.Truncate(24 * time.Hour)
	return key, err
}

// TestRoundedDateIsNotRescheduled schedules a deletion on a KMS that reports a date up to a
// day earlier than asked: the operator's own deletion is recognised, its window recorded, and
// it is not canceled and scheduled again (which would move the date on forever).
func TestRoundedDateIsNotRescheduled(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.clock.SetTime(time.Date(2026, 11, 27, 23, 0, 0, 0, time.UTC)) // 23 hours lost to rounding
	r, _ := directReconciler(h)
	r.KMS = roundingKMS{h.kms}
	rec := &recordingEvents{}
	r.Recorder = rec
	h.create(h.cmk("rounded"))
	reconcileAll(t, r, h, "rounded")
	h.patch("rounded", schedule)
	c := reconcileAll(t, r, h, "rounded")
	if c.Status.Phase != v1alpha1.PhasePendingDeletion || c.Status.PendingDays != 7 {
		t.Errorf("phase %s, window %d; want PendingDeletion with window 7", c.Status.Phase, c.Status.PendingDays)
	}
	if rec.has(v1alpha1.EventDeletionCanceled) {
		t.Errorf("the operator's own deletion was canceled and scheduled again: %v", rec.reasons())
	}
}
