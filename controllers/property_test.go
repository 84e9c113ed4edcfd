package controllers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
)

// TestKeySafetyProperties drives the reconciler, against a real apiserver and the embedded KMS,
// through random histories: spec edits (several between two reconciles, so the operator sees
// them as one), KMS calls that fail before they are made or whose answer is lost, crashes right
// after a KMS call (before status is written), status writes that lose their race, changes made in the KMS behind the operator's back, clock jumps past
// deletion dates, and finally the resource's deletion. The guard rails of docs/guardrails.md
// take part: deletionProtection set and cleared (set while the spec asks for the deletion, the
// apiserver must refuse it unless the same patch cancels the deletion; a deletion asked while
// protected must be refused too), the kms.cmk.io/paused annotation put on and taken off, the
// resource deleted while paused or protected, and a second resource that observes the trial's
// key (managementPolicy Observe), edited, reconciled with failures and deleted. After every
// settled reconcile (and, for the rails' "no call", after every reconcile) it checks:
//
//   - no key is scheduled for deletion earlier than the latest spec asks: the date is never
//     before the moment the spec asked for the deletion with its current pendingDays, plus
//     those days (a console change included: the operator must notice an earlier date). A
//     cancel and a schedule again with the same pendingDays may reach the operator as one
//     edit, and then keep the date, as docs/lifecycle.md says: they do not start a new count;
//   - no resource gets a second key: the KMS holds at most one key for it, and status.keyID
//     never changes once written;
//   - no resource loses its key: whenever the KMS holds a key made for the resource, status
//     names it; and deleting the resource applies deletionPolicy to it;
//   - while the resource is paused, the operator makes no KMS call for it, and its key does not
//     change in its reconciles; it reports Synced=False, reason ReconcilePaused, and being
//     deleted it waits. Once unpaused, the properties above hold again, the pending spec
//     applied;
//   - a protected key is never scheduled for deletion by the operator, for the spec or by the
//     finalizer; a resource being deleted with deletionPolicy Delete and protection stays,
//     Ready=False reason DeletionProtected and its key not pending deletion (protection asks for
//     none), until the protection is cleared; then it goes as deletionPolicy says;
//   - the observing resource makes no KMS write of any kind, in any reconcile, its deletion
//     included, and the key does not change in its reconciles (so its deletion leaves the key
//     exactly as it was); settled, its status reports the key as the KMS has it.
//
// CMK_PROPERTY_SEED and CMK_PROPERTY_TRIALS replay a failure or search longer.
func TestKeySafetyProperties(t *testing.T) {
	t.Parallel()
	seed, trials := uint64(time.Now().UnixNano()), 16
	if s := os.Getenv("CMK_PROPERTY_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	if n := os.Getenv("CMK_PROPERTY_TRIALS"); n != "" {
		trials, _ = strconv.Atoi(n)
	}
	t.Logf("seed %d (CMK_PROPERTY_SEED=%d replays it), %d trials", seed, seed, trials)
	for i := range trials {
		t.Run(fmt.Sprintf("trial-%d", i), func(t *testing.T) {
			t.Parallel()
			newTrial(t, rand.New(rand.NewPCG(seed, uint64(i)))).run(30)
		})
	}
}

// trial is one random history of one resource, and of one observing its key now and then, and
// the model the properties are checked with.
type trial struct {
	t    *testing.T
	h    *harness
	rng  *rand.Rand
	r    *CustomerMasterKeyReconciler
	kms  *crashingKMS
	log  bytes.Buffer
	spec v1alpha1.CustomerMasterKeySpec
	// askedAt is when the spec last asked for the deletion with another pendingDays than it
	// asked with before (askedDays); zero before it ever asked.
	askedAt   time.Time
	askedDays int32
	keyID     string
	// conflicts makes the next optimistic-lock status writes lose their race.
	conflicts bool
	// paused: the resource carries v1alpha1.PausedAnnotation.
	paused bool
	// observer is the spec of the resource observing the trial's key; nil while there is none.
	observer *v1alpha1.CustomerMasterKeySpec
}

const (
	trialName    = "prop"
	observerName = "prop-observer"
)

func newTrial(t *testing.T, rng *rand.Rand) *trial {
	tr := &trial{t: t, rng: rng, h: newHarness(t)}
	tr.kms = &crashingKMS{Provider: tr.h.kms, rng: rng, now: tr.h.clock.Now}
	c := interceptor.NewClient(env.Client, interceptor.Funcs{
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
			if data, _ := p.Data(o); tr.conflicts && bytes.Contains(data, []byte(`"resourceVersion"`)) && rng.IntN(2) == 0 {
				return apierrors.NewConflict(schema.GroupResource{Group: "kms.cmk.io", Resource: "customermasterkeys"}, o.GetName(), nil)
			}
			return c.SubResource(sub).Patch(ctx, o, p, opts...)
		},
	})
	tr.r = &CustomerMasterKeyReconciler{Client: c, KMS: tr.kms, Clock: tr.h.clock, SyncPeriod: DefaultSyncPeriod, ImportRetry: DefaultImportRetry}
	return tr
}

func (tr *trial) logf(format string, args ...any) {
	fmt.Fprintf(&tr.log, "%s  ", tr.h.clock.Now().Format(time.DateTime))
	fmt.Fprintf(&tr.log, format+"\n", args...)
}

func (tr *trial) fail(format string, args ...any) {
	tr.t.Helper()
	tr.t.Fatalf("%s\nhistory:\n%s", fmt.Sprintf(format, args...), tr.log.String())
}

func (tr *trial) run(steps int) {
	c := tr.h.cmk(trialName)
	c.Spec.Enabled = tr.rng.IntN(2) == 0
	c.Spec.DeletionPolicy = []v1alpha1.DeletionPolicy{v1alpha1.DeletionPolicyRetain, v1alpha1.DeletionPolicyDelete}[tr.rng.IntN(2)]
	switch tr.rng.IntN(5) {
	case 0:
		c.Spec.Enabled, c.Spec.DeletionScheduled = false, true
		tr.askedAt, tr.askedDays = tr.h.clock.Now(), c.Spec.PendingDays
	case 1:
		c.Spec.DeletionProtection = true
	}
	tr.spec = c.Spec
	tr.h.create(c)
	tr.logf("created %+v", c.Spec)
	for range steps {
		switch n := tr.rng.IntN(13); {
		case n < 4:
			for range 1 + tr.rng.IntN(3) {
				tr.edit()
			}
		case n < 7:
			tr.reconcileCrashing(trialName)
		case n < 8:
			tr.outside()
		case n < 9:
			tr.protect()
		case n < 10:
			tr.pause()
		case n < 11:
			tr.observe()
		default:
			tr.settle()
			tr.check()
			tr.jump()
		}
	}
	tr.settle()
	tr.check()
	if tr.observer != nil && tr.rng.IntN(2) == 0 {
		tr.dropObserver() // before the observed key's resource goes, or after
	}
	switch tr.rng.IntN(4) {
	case 0:
		tr.deleteResource()
	case 1:
		// Edits the operator has not seen yet, then the deletion: the finalizer carries out
		// the last spec.
		for range 1 + tr.rng.IntN(3) {
			tr.editDeletion()
		}
		tr.deleteResource()
	case 2:
		// Protected, then deleted: with deletionPolicy Delete, the finalizer is held.
		if !tr.spec.DeletionProtection {
			tr.protect()
		}
		tr.deleteResource()
	}
	if tr.observer != nil {
		tr.dropObserver()
	}
}

// edit changes the spec as a user may (the apiserver's rules hold), one patch at a time.
func (tr *trial) edit() { tr.editKind(tr.rng.IntN(5)) }

// editDeletion changes what the spec says of the deletion: schedules, cancels, sets another
// window, or sets or clears the protection.
func (tr *trial) editDeletion() {
	if tr.rng.IntN(4) == 0 {
		tr.protect()
		return
	}
	tr.editKind(1 + tr.rng.IntN(3))
}

func (tr *trial) editKind(n int) {
	s := tr.spec
	patch := map[string]any{}
	switch {
	case n == 0 && !s.DeletionScheduled:
		s.Enabled = !s.Enabled
		patch["enabled"] = s.Enabled
	case n == 1 && !s.DeletionScheduled:
		// Refused while the spec is protected.
		s.Enabled, s.DeletionScheduled = false, true
		patch["enabled"], patch["deletionScheduled"] = false, true
	case n == 2 && s.DeletionScheduled:
		s.DeletionScheduled = false
		patch["deletionScheduled"] = false
	case n == 3 && !s.DeletionScheduled:
		s.PendingDays = []int32{7, 8, 30, 400}[tr.rng.IntN(4)]
		patch["pendingDays"] = s.PendingDays
	default:
		s.Description = fmt.Sprintf("edit %d", tr.rng.IntN(1000))
		patch["description"] = s.Description
	}
	tr.submit(s, patch)
}

// protect sets or clears spec.deletionProtection. Set while the spec asks for the deletion, it
// is refused, unless the same patch cancels the deletion; cleared, the same patch may ask for
// the deletion.
func (tr *trial) protect() {
	s := tr.spec
	s.DeletionProtection = !s.DeletionProtection
	patch := map[string]any{"deletionProtection": s.DeletionProtection}
	switch {
	case s.DeletionProtection && s.DeletionScheduled && tr.rng.IntN(2) == 0:
		s.DeletionScheduled = false
		patch["deletionScheduled"] = false
	case !s.DeletionProtection && !s.DeletionScheduled && tr.rng.IntN(3) == 0:
		s.Enabled, s.DeletionScheduled = false, true
		patch["enabled"], patch["deletionScheduled"] = false, true
	}
	tr.submit(s, patch)
}

// submit patches the spec and, when the apiserver takes the patch, makes next the model's
// spec. The apiserver must refuse exactly the specs that are protected and ask for the
// deletion; the model stays as it was when it does.
func (tr *trial) submit(next v1alpha1.CustomerMasterKeySpec, patch map[string]any) {
	err := tr.patch(trialName, map[string]any{"spec": patch})
	refused := next.DeletionProtection && next.DeletionScheduled
	switch {
	case refused && apierrors.IsInvalid(err):
		tr.logf("edit %v refused, as the protection asks", patch)
		return
	case err != nil || refused:
		tr.fail("edit %v of %+v: %v; want it refused: %v", patch, tr.spec, err, refused)
	}
	if next.DeletionScheduled && (tr.askedAt.IsZero() || next.PendingDays != tr.askedDays) {
		// Asked with a new window: a new count. Asked again with the window of the last
		// ask, as a cancel and a schedule the operator may see as one edit, the date stands
		// (docs/lifecycle.md, "Deletion dates").
		tr.askedAt, tr.askedDays = tr.h.clock.Now(), next.PendingDays
	}
	tr.spec = next
	tr.logf("edit %v", patch)
}

// patch applies a JSON merge patch to a resource, as `kubectl patch --type merge` does.
func (tr *trial) patch(name string, patch map[string]any) error {
	c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: tr.h.ns}}
	return env.Client.Patch(context.Background(), c, rawMerge(tr.t, patch))
}

// pause puts kms.cmk.io/paused on the resource, or takes it off.
func (tr *trial) pause() {
	tr.paused = !tr.paused
	var v any // nil removes the annotation
	if tr.paused {
		v = "true"
	}
	if err := tr.patch(trialName, map[string]any{"metadata": map[string]any{"annotations": map[string]any{v1alpha1.PausedAnnotation: v}}}); err != nil {
		tr.fail("pausing (%v): %v", tr.paused, err)
	}
	tr.logf("paused: %v", tr.paused)
}

// observe creates the resource observing the trial's key, once there is one, then edits it
// (the operator ignores its spec), reconciles it, or deletes it.
func (tr *trial) observe() {
	switch {
	case tr.observer == nil && tr.keyID != "":
		o := tr.h.cmk(observerName, func(c *v1alpha1.CustomerMasterKey) {
			c.Spec.ManagementPolicy, c.Spec.KeyID = v1alpha1.ManagementPolicyObserve, tr.keyID
			c.Spec.DeletionPolicy = []v1alpha1.DeletionPolicy{v1alpha1.DeletionPolicyRetain, v1alpha1.DeletionPolicyDelete}[tr.rng.IntN(2)]
			c.Spec.DeletionProtection = tr.rng.IntN(3) == 0
		})
		tr.h.create(o)
		tr.observer = &o.Spec
		tr.logf("created the observer %+v", o.Spec)
	case tr.observer == nil:
		// No key to observe yet.
	case tr.rng.IntN(5) == 0:
		tr.dropObserver()
	case tr.rng.IntN(2) == 0:
		tr.editObserver()
	default:
		tr.reconcileCrashing(observerName)
	}
}

// editObserver asks the observed key to be disabled and deleted, or not, or described: none of
// it may reach the KMS.
func (tr *trial) editObserver() {
	s := tr.observer
	patch := map[string]any{"description": fmt.Sprintf("observer edit %d", tr.rng.IntN(1000))}
	if !s.DeletionProtection {
		s.Enabled, s.DeletionScheduled = s.DeletionScheduled, !s.DeletionScheduled
		patch["enabled"], patch["deletionScheduled"] = s.Enabled, s.DeletionScheduled
	}
	if err := tr.patch(observerName, map[string]any{"spec": patch}); err != nil {
		tr.fail("editing the observer with %v: %v", patch, err)
	}
	tr.logf("observer edit %v", patch)
}

// dropObserver deletes the observing resource; its reconciles are held to the rails (see
// reconcile), so it goes without any KMS write.
func (tr *trial) dropObserver() {
	tr.h.delete(observerName)
	tr.logf("deleted the observer")
	for i := 0; tr.exists(observerName); i++ {
		if i > 6 {
			tr.fail("the observer was never let go")
		}
		tr.reconcileCrashing(observerName)
	}
	tr.observer = nil
	tr.logf("observer gone")
}

func (tr *trial) exists(name string) bool {
	err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: tr.h.ns, Name: name}, &v1alpha1.CustomerMasterKey{})
	if err != nil && !apierrors.IsNotFound(err) {
		tr.fail("reading %s: %v", name, err)
	}
	return err == nil
}

// reconcileCrashing reconciles a resource once, with KMS calls that may crash the operator
// right after they are made, and status writes that may lose their race.
func (tr *trial) reconcileCrashing(name string) {
	tr.kms.crashOneIn, tr.conflicts = 3, true
	res, err := tr.reconcile(name)
	tr.kms.crashOneIn, tr.conflicts = 0, false
	tr.logf("reconcile %s (crashing) → %+v %v", name, res, err)
}

// reconcile reconciles a resource once, and holds it to the rails that bound every reconcile:
// a paused resource makes no KMS call, an observing one no KMS write, and neither changes the
// trial's key (which also catches a write through a call crashingKMS does not count).
func (tr *trial) reconcile(name string) (reconcile.Result, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr.kms.cancel = cancel
	tr.kms.spec = tr.spec
	paused := name == trialName && tr.paused
	untouchable := paused || name == observerName
	var version string
	if untouchable {
		version = tr.keyVersion()
	}
	res, err := tr.r.Reconcile(ctx, reconcile.Request{NamespacedName: client.ObjectKey{Namespace: tr.h.ns, Name: name}})
	if bad := tr.kms.takeBadSchedule(); bad != "" {
		tr.fail("%s", bad)
	}
	switch calls, writes := tr.kms.took(); {
	case paused && calls > 0:
		tr.fail("paused, the operator made %d KMS calls for the resource (%d writes)", calls, writes)
	case name == observerName && writes > 0:
		tr.fail("the operator made %d KMS writes for the resource with managementPolicy Observe", writes)
	case untouchable && tr.keyVersion() != version:
		tr.fail("a reconcile of %s (paused: %v) changed key %s in the KMS", name, paused, tr.keyID)
	}
	return res, err
}

// keyVersion is the resourceVersion of the Secret the embedded KMS keeps the trial's key in,
// "" while there is none known: any write to the key, by whatever call, changes it.
func (tr *trial) keyVersion() string {
	if tr.keyID == "" {
		return ""
	}
	s := &corev1.Secret{}
	err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: tr.h.kmsNS, Name: "cmk-" + tr.keyID}, s)
	if err != nil && !apierrors.IsNotFound(err) {
		tr.fail("reading the Secret of key %s: %v", tr.keyID, err)
	}
	return s.ResourceVersion
}

// settle reconciles, crash-free, until the resources need nothing more.
func (tr *trial) settle() {
	tr.t.Helper()
	tr.settleOne(trialName)
	if tr.observer != nil {
		tr.settleOne(observerName)
	}
}

func (tr *trial) settleOne(name string) {
	tr.t.Helper()
	for range 12 {
		res, err := tr.reconcile(name)
		if err == nil && !res.Requeue && res.RequeueAfter >= time.Second { //nolint:staticcheck // The rate-limited requeue is what is checked.
			tr.logf("settled %s", name)
			return
		}
	}
	tr.fail("no settled state of %s after 12 reconciles", name)
}

// outside changes the key in the KMS as a console user would.
func (tr *trial) outside() {
	if tr.keyID == "" {
		return
	}
	ctx := context.Background()
	var err error
	what := []string{"disable", "enable", "schedule", "cancel", "reschedule shorter"}[tr.rng.IntN(5)]
	switch what {
	case "disable":
		err = tr.h.kms.Disable(ctx, tr.keyID)
	case "enable":
		err = tr.h.kms.Enable(ctx, tr.keyID)
	case "schedule":
		err = tr.h.kms.ScheduleDeletion(ctx, tr.keyID, 7+tr.rng.IntN(50))
	case "cancel":
		err = tr.h.kms.CancelDeletion(ctx, tr.keyID)
	case "reschedule shorter":
		if err = tr.h.kms.CancelDeletion(ctx, tr.keyID); err == nil {
			err = tr.h.kms.ScheduleDeletion(ctx, tr.keyID, 7)
		}
	}
	tr.logf("outside: %s (%v)", what, err)
}

// jump moves the clock on, and the KMS deletes what came due.
func (tr *trial) jump() {
	d := []time.Duration{time.Minute, time.Hour, 3 * day, 10 * day}[tr.rng.IntN(4)]
	tr.h.clock.Step(d)
	if _, err := tr.h.kms.ReapDue(context.Background()); err != nil {
		tr.fail("reaping: %v", err)
	}
	tr.logf("clock +%v", d)
}

// check verifies the properties against the settled resources.
func (tr *trial) check() {
	if tr.observer != nil {
		tr.checkObserver()
	}
	c := &v1alpha1.CustomerMasterKey{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: tr.h.ns, Name: trialName}, c); err != nil {
		tr.fail("reading the resource: %v", err)
	}
	if tr.paused {
		// The rest waits for the pause to end: the spec is not applied, and a key made by a
		// reconcile that crashed is not looked up.
		if s := cond(c, v1alpha1.ConditionSynced); s.Status != metav1.ConditionFalse || s.Reason != v1alpha1.ReasonReconcilePaused {
			tr.fail("paused, Synced is %s, reason %s; want False, ReconcilePaused", s.Status, s.Reason)
		}
		tr.logf("checked: paused")
		return
	}
	key, err := tr.h.kms.Lookup(context.Background(), string(c.UID))
	switch {
	case kms.IsNotFound(err):
		if c.Status.KeyID != "" {
			tr.fail("status names key %s, but the KMS made none for the resource", c.Status.KeyID)
		}
		if !tr.spec.DeletionScheduled && tr.keyID == "" {
			tr.fail("the spec asks for a key and none was made")
		}
		return
	case err != nil:
		tr.fail("lookup: %v", err)
	}
	if tr.keyID != "" && tr.keyID != key.ID {
		tr.fail("a second key %s for the resource, after %s", key.ID, tr.keyID)
	}
	tr.keyID = key.ID
	if c.Status.KeyID != key.ID {
		tr.fail("the KMS holds key %s (%s) for the resource, status names %q", key.ID, key.State, c.Status.KeyID)
	}
	if n := tr.h.keySecrets(); n != 1 {
		tr.fail("%d keys in the KMS for one resource", n)
	}
	switch key.State {
	case kms.StatePendingDeletion:
		if !tr.spec.DeletionScheduled {
			tr.fail("settled with the key pending deletion while the spec does not ask for it")
		}
		earliest := tr.askedAt.Add(time.Duration(tr.askedDays) * day).Truncate(time.Second)
		if key.DeletionDate.Before(earliest) {
			tr.fail("key deleted on %v, earlier than the spec asks: %d days from %v", key.DeletionDate, tr.askedDays, tr.askedAt)
		}
	case kms.StateEnabled, kms.StateDisabled:
		if tr.spec.DeletionScheduled || (key.State == kms.StateEnabled) != tr.spec.Enabled {
			tr.fail("settled with the key %s, the spec asks for %+v", key.State, tr.spec)
		}
	}
	tr.logf("checked: key %s, %v", key.State, key.DeletionDate)
}

// checkObserver: the observing resource reports the observed key as the KMS has it, so the
// rails it is held to are not kept by a resource that observes nothing.
func (tr *trial) checkObserver() {
	c := tr.h.get(observerName)
	state := kms.StateDeleted // a key the KMS no longer has, as status reports it
	switch key, err := tr.h.kms.Observe(context.Background(), tr.keyID); {
	case err == nil:
		state = key.State
	case !kms.IsNotFound(err):
		tr.fail("reading the observed key: %v", err)
	}
	switch {
	case c.Status.KeyID == "" && state == kms.StateDeleted:
		// Created after the key's deletion, or its first reconcile failed until then: there
		// is nothing to observe.
	case c.Status.KeyID != tr.keyID || string(c.Status.Phase) != string(state):
		tr.fail("the observer reports key %q %s; the KMS has %s %s", c.Status.KeyID, c.Status.Phase, tr.keyID, state)
	}
}

// deleteResource deletes the resource, lets the finalizer run (crashing now and then), and
// checks deletionPolicy was applied to the key. A paused resource waits for the pause to end,
// a protected one for its protection to be cleared, as long as it has a key to protect.
func (tr *trial) deleteResource() {
	c := tr.h.get(trialName)
	before, _ := tr.h.kms.Lookup(context.Background(), string(c.UID))
	tr.h.delete(trialName)
	tr.logf("deleted the resource (%s)", tr.spec.DeletionPolicy)
	if !controllerutil.ContainsFinalizer(c, Finalizer) {
		// Paused since before its first reconcile: it never had a key, nor a finalizer.
		if tr.exists(trialName) || before.ID != "" {
			tr.fail("a resource without the finalizer is not gone at once, or has key %q", before.ID)
		}
		return
	}
	if tr.paused {
		tr.waitPaused()
	}
	if tr.spec.DeletionProtection && tr.spec.DeletionPolicy == v1alpha1.DeletionPolicyDelete && before.ID != "" && before.State != kms.StateDeleted {
		tr.waitProtected()
	}
	for i := 0; ; i++ {
		if i < 3 {
			tr.reconcileCrashing(trialName)
		} else if _, err := tr.reconcile(trialName); err != nil && i > 12 {
			tr.fail("finalizing: %v", err)
		}
		if !tr.exists(trialName) {
			break
		}
		if i > 15 {
			tr.fail("the resource was never let go")
		}
	}
	if before.ID == "" || before.State == kms.StateDeleted {
		return
	}
	after, err := tr.h.kms.Observe(context.Background(), before.ID)
	if err != nil {
		tr.fail("reading the key after its resource went: %v", err)
	}
	wants := tr.spec.DeletionScheduled || tr.spec.DeletionPolicy == v1alpha1.DeletionPolicyDelete
	switch {
	case wants && after.State != kms.StatePendingDeletion:
		tr.fail("the last spec (%+v) asks for the key's deletion, and it is %s after its resource went", tr.spec, after.State)
	case !wants && after.State == kms.StatePendingDeletion:
		tr.fail("deletionPolicy Retain and a spec that does not ask for the deletion left the key pending deletion")
	case !wants && before.State != kms.StatePendingDeletion && after.State != before.State:
		tr.fail("deletionPolicy Retain changed the key from %s to %s", before.State, after.State)
	case tr.spec.DeletionScheduled:
		if earliest := tr.askedAt.Add(time.Duration(tr.askedDays) * day).Truncate(time.Second); after.DeletionDate.Before(earliest) {
			tr.fail("after its resource went, the key is deleted on %v, earlier than the spec asks: %d days from %v",
				after.DeletionDate, tr.askedDays, tr.askedAt)
		}
	}
	tr.logf("resource gone; key %s %v", after.State, after.DeletionDate)
}

// waitPaused reconciles the paused resource being deleted: the finalizer waits, with no KMS
// call (see reconcile), until the pause is lifted.
func (tr *trial) waitPaused() {
	for range 1 + tr.rng.IntN(3) {
		tr.reconcileCrashing(trialName)
		if !tr.exists(trialName) {
			tr.fail("the paused resource was let go")
		}
	}
	tr.settle()
	tr.check()
	tr.pause()
}

// waitProtected drives the protected resource being deleted with deletionPolicy Delete through
// reconciles, console changes and clock jumps: it stays, held, until the protection is cleared.
// A schedule of its key is caught by crashingKMS.
func (tr *trial) waitProtected() {
	for range 2 + tr.rng.IntN(4) {
		switch tr.rng.IntN(3) {
		case 0:
			tr.reconcileCrashing(trialName)
		case 1:
			tr.outside()
		default:
			tr.settle()
			tr.checkHeld()
			tr.jump()
		}
		if !tr.exists(trialName) {
			tr.fail("the protected resource was let go, and deletionPolicy Delete applied, before its protection was cleared")
		}
	}
	tr.settle()
	tr.checkHeld()
	tr.protect()
}

// checkHeld: a resource held by its protection says so, and its key is not pending deletion:
// the protection asks for none, as it would of a resource not being deleted.
func (tr *trial) checkHeld() {
	c := tr.h.get(trialName)
	if r := cond(c, v1alpha1.ConditionReady); r.Status != metav1.ConditionFalse || r.Reason != v1alpha1.ReasonDeletionProtected {
		tr.fail("held by its protection, the resource's Ready is %s, reason %s; want False, DeletionProtected", r.Status, r.Reason)
	}
	key, err := tr.h.kms.Observe(context.Background(), c.Status.KeyID)
	if err != nil {
		tr.fail("reading the protected key %q: %v", c.Status.KeyID, err)
	}
	if key.State == kms.StatePendingDeletion {
		tr.fail("held by its protection, the resource's key is pending deletion (on %v); the protected spec asks for no deletion", key.DeletionDate)
	}
	tr.logf("checked: held, key %s", key.State)
}

// crashingKMS is the embedded KMS where, when crashOneIn > 0, about one call in crashOneIn goes
// wrong: it fails before the KMS sees it, or it is made and then the operator "crashes" (the
// reconcile's context ends before it hears the answer) or hears a transient error instead of
// the answer. It checks every deletion the operator schedules uses the spec's pendingDays, and
// is of a key the spec does not protect; and it counts the operator's calls, for the rails.
type crashingKMS struct {
	*embedded.Provider
	rng        *rand.Rand
	now        func() time.Time
	crashOneIn int
	cancel     context.CancelFunc
	spec       v1alpha1.CustomerMasterKeySpec
	mu         sync.Mutex
	bad        string
	// calls and writes count the calls since took, and those of them that change the KMS.
	calls, writes int
}

// after decides what the operator hears of a call that was made: the answer, nothing (it
// crashed), or a transient error as if the answer were lost on the way.
func (c *crashingKMS) after(err error) error {
	if err != nil || c.crashOneIn == 0 {
		return err
	}
	switch c.rng.IntN(2 * c.crashOneIn) {
	case 0:
		c.cancel()
		return context.Canceled
	case 1:
		return errLostAnswer
	}
	return nil
}

// before counts a call, and fails it now and then before the KMS sees it, as an unavailable
// KMS does. write is for a call that changes something in the KMS.
func (c *crashingKMS) before(write bool) error {
	c.mu.Lock()
	c.calls++
	if write {
		c.writes++
	}
	c.mu.Unlock()
	if c.crashOneIn > 0 && c.rng.IntN(2*c.crashOneIn) == 0 {
		return errUnavailable
	}
	return nil
}

// took returns the calls counted since it was last called, and how many were writes.
func (c *crashingKMS) took() (calls, writes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	calls, writes = c.calls, c.writes
	c.calls, c.writes = 0, 0
	return calls, writes
}

var (
	errLostAnswer  = errors.New("injected: connection reset after the call was made")
	errUnavailable = errors.New("injected: 503 Service Unavailable")
)

func (c *crashingKMS) Observe(ctx context.Context, id string) (kms.Key, error) {
	if err := c.before(false); err != nil {
		return kms.Key{}, err
	}
	return c.Provider.Observe(ctx, id)
}

func (c *crashingKMS) Lookup(ctx context.Context, token string) (kms.Key, error) {
	if err := c.before(false); err != nil {
		return kms.Key{}, err
	}
	return c.Provider.Lookup(ctx, token)
}

func (c *crashingKMS) takeBadSchedule() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	bad := c.bad
	c.bad = ""
	return bad
}

func (c *crashingKMS) Create(ctx context.Context, req kms.CreateRequest) (kms.Key, error) {
	if err := c.before(true); err != nil {
		return kms.Key{}, err
	}
	k, err := c.Provider.Create(ctx, req)
	return k, c.after(err)
}

func (c *crashingKMS) Enable(ctx context.Context, id string) error {
	if err := c.before(true); err != nil {
		return err
	}
	return c.after(c.Provider.Enable(ctx, id))
}

func (c *crashingKMS) Disable(ctx context.Context, id string) error {
	if err := c.before(true); err != nil {
		return err
	}
	return c.after(c.Provider.Disable(ctx, id))
}

func (c *crashingKMS) CancelDeletion(ctx context.Context, id string) error {
	if err := c.before(true); err != nil {
		return err
	}
	return c.after(c.Provider.CancelDeletion(ctx, id))
}

func (c *crashingKMS) ScheduleDeletion(ctx context.Context, id string, days int) error {
	c.mu.Lock()
	switch {
	case c.spec.DeletionProtection:
		c.bad = fmt.Sprintf("the operator scheduled the deletion of key %s, which the spec protects (%+v)", id, c.spec)
	case days != int(c.spec.PendingDays):
		c.bad = fmt.Sprintf("the operator scheduled a deletion with %d days; the spec asks for %d", days, c.spec.PendingDays)
	}
	c.mu.Unlock()
	if err := c.before(true); err != nil {
		return err
	}
	return c.after(c.Provider.ScheduleDeletion(ctx, id, days))
}

// The calls below are wrapped to be counted, so that no call of a paused resource, and no
// write of an observing one, goes unseen; they go wrong like those above.

func (c *crashingKMS) SetDescription(ctx context.Context, id, description string) error {
	if err := c.before(true); err != nil {
		return err
	}
	return c.after(c.Provider.SetDescription(ctx, id, description))
}

func (c *crashingKMS) Owner(ctx context.Context, id string) (kms.Owner, error) {
	if err := c.before(false); err != nil {
		return kms.Owner{}, err
	}
	return c.Provider.Owner(ctx, id)
}

func (c *crashingKMS) Claim(ctx context.Context, id string, owner, previous kms.Owner) error {
	if err := c.before(true); err != nil {
		return err
	}
	return c.after(c.Provider.Claim(ctx, id, owner, previous))
}

func (c *crashingKMS) Rotation(ctx context.Context, id string) (kms.Rotation, error) {
	if err := c.before(false); err != nil {
		return kms.Rotation{}, err
	}
	return c.Provider.Rotation(ctx, id)
}

func (c *crashingKMS) SetRotation(ctx context.Context, id string, enabled bool, intervalDays int) error {
	if err := c.before(true); err != nil {
		return err
	}
	return c.after(c.Provider.SetRotation(ctx, id, enabled, intervalDays))
}

func (c *crashingKMS) Tags(ctx context.Context, id string) (map[string]string, error) {
	if err := c.before(false); err != nil {
		return nil, err
	}
	return c.Provider.Tags(ctx, id)
}

func (c *crashingKMS) SetTags(ctx context.Context, id string, tags map[string]string) error {
	if err := c.before(true); err != nil {
		return err
	}
	return c.after(c.Provider.SetTags(ctx, id, tags))
}

func (c *crashingKMS) ImportParameters(ctx context.Context, id string) (kms.ImportParameters, error) {
	if err := c.before(true); err != nil {
		return kms.ImportParameters{}, err
	}
	p, err := c.Provider.ImportParameters(ctx, id)
	return p, c.after(err)
}

func (c *crashingKMS) ImportMaterial(ctx context.Context, id, token string, wrapped []byte, expiresAt time.Time) error {
	if err := c.before(true); err != nil {
		return err
	}
	return c.after(c.Provider.ImportMaterial(ctx, id, token, wrapped, expiresAt))
}

func (c *crashingKMS) Provenance(ctx context.Context, id string) (kms.Owner, kms.Provenance, error) {
	if err := c.before(false); err != nil {
		return kms.Owner{}, kms.Provenance{}, err
	}
	return c.Provider.Provenance(ctx, id)
}

func (c *crashingKMS) SetPolicy(ctx context.Context, id string, prov kms.Provenance) error {
	if err := c.before(true); err != nil {
		return err
	}
	return c.after(c.Provider.SetPolicy(ctx, id, prov))
}
