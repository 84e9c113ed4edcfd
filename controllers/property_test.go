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

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
)

// TestKeySafetyProperties drives the reconciler, against a real apiserver and the embedded KMS,
// through random histories: spec edits (several between two reconciles, so the operator sees
// them as one), KMS calls that fail before they are made or whose answer is lost, crashes right
// after a KMS call (before status is written), status writes that lose their race, changes made in the KMS behind the operator's back, clock jumps past
// deletion dates, and finally the resource's deletion. After every settled reconcile it checks:
//
//   - no key is scheduled for deletion earlier than the latest spec asks: the date is never
//     before the moment the spec asked for the deletion with its current pendingDays, plus
//     those days (a console change included: the operator must notice an earlier date). A
//     cancel and a schedule again with the same pendingDays may reach the operator as one
//     edit, and then keep the date, as docs/lifecycle.md says: they do not start a new count;
//   - no resource gets a second key: the KMS holds at most one key for it, and status.keyID
//     never changes once written;
//   - no resource loses its key: whenever the KMS holds a key made for the resource, status
//     names it; and deleting the resource applies deletionPolicy to it.
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

// trial is one random history of one resource, and the model the properties are checked with.
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
}

const trialName = "prop"

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
	if tr.rng.IntN(5) == 0 {
		c.Spec.Enabled, c.Spec.DeletionScheduled = false, true
		tr.askedAt, tr.askedDays = tr.h.clock.Now(), c.Spec.PendingDays
	}
	tr.spec = c.Spec
	tr.h.create(c)
	tr.logf("created %+v", c.Spec)
	for range steps {
		switch n := tr.rng.IntN(10); {
		case n < 4:
			for range 1 + tr.rng.IntN(3) {
				tr.edit()
			}
		case n < 7:
			tr.reconcileCrashing()
		case n < 8:
			tr.outside()
		default:
			tr.settle()
			tr.check()
			tr.jump()
		}
	}
	tr.settle()
	tr.check()
	switch tr.rng.IntN(3) {
	case 0:
		tr.deleteResource()
	case 1:
		// Edits the operator has not seen yet, then the deletion: the finalizer carries out
		// the last spec.
		for range 1 + tr.rng.IntN(3) {
			tr.editDeletion()
		}
		tr.deleteResource()
	}
}

// edit changes the spec as a user may (the apiserver's rules hold), one patch at a time.
func (tr *trial) edit() { tr.editKind(tr.rng.IntN(5)) }

// editDeletion changes what the spec says of the deletion: schedules, cancels, or sets another
// window.
func (tr *trial) editDeletion() { tr.editKind(1 + tr.rng.IntN(3)) }

func (tr *trial) editKind(n int) {
	s := &tr.spec
	patch := map[string]any{}
	switch {
	case n == 0 && !s.DeletionScheduled:
		s.Enabled = !s.Enabled
		patch["enabled"] = s.Enabled
	case n == 1 && !s.DeletionScheduled:
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
	if s.DeletionScheduled && (tr.askedAt.IsZero() || s.PendingDays != tr.askedDays) {
		// Asked with a new window: a new count. Asked again with the window of the last
		// ask, as a cancel and a schedule the operator may see as one edit, the date stands
		// (docs/lifecycle.md, "Deletion dates").
		tr.askedAt, tr.askedDays = tr.h.clock.Now(), s.PendingDays
	}
	tr.h.patch(trialName, patch)
	tr.logf("edit %v", patch)
}

// reconcileCrashing reconciles once, with KMS calls that may crash the operator right after
// they are made, and status writes that may lose their race.
func (tr *trial) reconcileCrashing() {
	tr.kms.crashOneIn, tr.conflicts = 3, true
	res, err := tr.reconcile()
	tr.kms.crashOneIn, tr.conflicts = 0, false
	tr.logf("reconcile (crashing) → %+v %v", res, err)
}

func (tr *trial) reconcile() (reconcile.Result, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr.kms.cancel = cancel
	tr.kms.spec = tr.spec
	res, err := tr.r.Reconcile(ctx, reconcile.Request{NamespacedName: client.ObjectKey{Namespace: tr.h.ns, Name: trialName}})
	if bad := tr.kms.takeBadSchedule(); bad != "" {
		tr.fail("%s", bad)
	}
	return res, err
}

// settle reconciles, crash-free, until the resource needs nothing more.
func (tr *trial) settle() {
	tr.t.Helper()
	for range 12 {
		res, err := tr.reconcile()
		if err == nil && !res.Requeue && res.RequeueAfter >= time.Second { //nolint:staticcheck // The rate-limited requeue is what is checked.
			tr.logf("settled")
			return
		}
	}
	tr.fail("no settled state after 12 reconciles")
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

// check verifies the properties against a settled resource.
func (tr *trial) check() {
	c := &v1alpha1.CustomerMasterKey{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: tr.h.ns, Name: trialName}, c); err != nil {
		tr.fail("reading the resource: %v", err)
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

// deleteResource deletes the resource, lets the finalizer run (crashing now and then), and
// checks deletionPolicy was applied to the key.
func (tr *trial) deleteResource() {
	before, _ := tr.h.kms.Lookup(context.Background(), string(tr.h.get(trialName).UID))
	tr.h.delete(trialName)
	tr.logf("deleted the resource (%s)", tr.spec.DeletionPolicy)
	for i := 0; ; i++ {
		if i < 3 {
			tr.reconcileCrashing()
		} else if _, err := tr.reconcile(); err != nil && i > 12 {
			tr.fail("finalizing: %v", err)
		}
		err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: tr.h.ns, Name: trialName}, &v1alpha1.CustomerMasterKey{})
		if apierrors.IsNotFound(err) {
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

// crashingKMS is the embedded KMS where, when crashOneIn > 0, about one call in crashOneIn goes
// wrong: it fails before the KMS sees it, or it is made and then the operator "crashes" (the
// reconcile's context ends before it hears the answer) or hears a transient error instead of
// the answer. It also checks every deletion the operator schedules uses the spec's pendingDays.
type crashingKMS struct {
	*embedded.Provider
	rng        *rand.Rand
	now        func() time.Time
	crashOneIn int
	cancel     context.CancelFunc
	spec       v1alpha1.CustomerMasterKeySpec
	mu         sync.Mutex
	bad        string
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

// before fails, now and then, a call before the KMS sees it, as an unavailable KMS does.
func (c *crashingKMS) before() error {
	if c.crashOneIn > 0 && c.rng.IntN(2*c.crashOneIn) == 0 {
		return errUnavailable
	}
	return nil
}

var (
	errLostAnswer  = errors.New("injected: connection reset after the call was made")
	errUnavailable = errors.New("injected: 503 Service Unavailable")
)

func (c *crashingKMS) Observe(ctx context.Context, id string) (kms.Key, error) {
	if err := c.before(); err != nil {
		return kms.Key{}, err
	}
	return c.Provider.Observe(ctx, id)
}

func (c *crashingKMS) Lookup(ctx context.Context, token string) (kms.Key, error) {
	if err := c.before(); err != nil {
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
	if err := c.before(); err != nil {
		return kms.Key{}, err
	}
	k, err := c.Provider.Create(ctx, req)
	return k, c.after(err)
}

func (c *crashingKMS) Enable(ctx context.Context, id string) error {
	if err := c.before(); err != nil {
		return err
	}
	return c.after(c.Provider.Enable(ctx, id))
}

func (c *crashingKMS) Disable(ctx context.Context, id string) error {
	if err := c.before(); err != nil {
		return err
	}
	return c.after(c.Provider.Disable(ctx, id))
}

func (c *crashingKMS) CancelDeletion(ctx context.Context, id string) error {
	if err := c.before(); err != nil {
		return err
	}
	return c.after(c.Provider.CancelDeletion(ctx, id))
}

func (c *crashingKMS) ScheduleDeletion(ctx context.Context, id string, days int) error {
	if days != int(c.spec.PendingDays) {
		c.mu.Lock()
		c.bad = fmt.Sprintf("the operator scheduled a deletion with %d days; the spec asks for %d", days, c.spec.PendingDays)
		c.mu.Unlock()
	}
	if err := c.before(); err != nil {
		return err
	}
	return c.after(c.Provider.ScheduleDeletion(ctx, id, days))
}
