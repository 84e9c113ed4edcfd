package keystatus

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

var now = time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)

// spec is the spec of a test key (testenv.Key), enabled and scheduled for deletion as asked.
func spec(enabled, scheduled bool) v1alpha1.CustomerMasterKeySpec {
	s := testenv.Key("", "").Spec
	s.Enabled, s.DeletionScheduled = enabled, scheduled
	return s
}

func external(s v1alpha1.CustomerMasterKeySpec, secret string) v1alpha1.CustomerMasterKeySpec {
	s.Origin = v1alpha1.OriginExternal
	if secret != "" {
		s.KeyMaterial = &v1alpha1.KeyMaterial{SecretRef: v1alpha1.LocalSecretReference{Name: secret}}
	}
	return s
}

func key(state kms.State) *kms.Key {
	k := &kms.Key{ID: "k1", State: state, HasMaterial: state != kms.StatePendingImport}
	if state == kms.StatePendingDeletion {
		k.DeletionDate = now.Add(7 * 24 * time.Hour)
	}
	return k
}

// want is what a case expects of the conditions: "" for a condition that must be absent, else
// "True/Reason" or "False/Reason".
type want struct {
	ready, reconciling, stalled, synced string
	// observed: status.observedGeneration is the resource's generation afterwards.
	observed bool
	// events are the reasons of the events, in order.
	events []string
}

func TestCompute(t *testing.T) {
	blocked := func(reason string) *Failure {
		return Classify(&Blocked{Reason: reason, Message: "what to do about " + reason}, "")
	}
	imported := func(reason string) *Failure {
		return Classify(&Blocked{Reason: reason, Message: "what to do about " + reason, Import: true}, "")
	}
	transient := Classify(errors.New("connection reset"), "Enable")
	unavailable := Classify(&kms.UnavailableError{Reason: "credentials refused", RetryAfter: time.Minute}, "Observing")
	conflict := Classify(apierrors.NewConflict(schema.GroupResource{Resource: "secrets"}, "k", errors.New("changed")), "Enable")

	cases := map[string]struct {
		spec     v1alpha1.CustomerMasterKeySpec
		keyID    string
		key      *kms.Key
		pending  int32
		deleting bool
		failure  *Failure
		cut      bool
		paused   bool
		before   v1alpha1.Phase
		want     want
	}{
		// Ready=True: the KMS is as the spec asks, usable or not.
		"Available":       {spec: spec(true, false), keyID: "k1", key: key(kms.StateEnabled), want: want{ready: "True/Available", synced: "True/ReconcileSuccess", observed: true}},
		"KeyDisabled":     {spec: spec(false, false), keyID: "k1", key: key(kms.StateDisabled), want: want{ready: "True/KeyDisabled", synced: "True/ReconcileSuccess", observed: true}},
		"PendingDeletion": {spec: spec(false, true), keyID: "k1", key: key(kms.StatePendingDeletion), pending: 7, want: want{ready: "True/PendingDeletion", synced: "True/ReconcileSuccess", observed: true}},
		"PendingImport":   {spec: external(spec(true, false), ""), keyID: "k1", key: key(kms.StatePendingImport), want: want{ready: "True/PendingImport", synced: "True/ReconcileSuccess", observed: true}},
		"NotCreated":      {spec: spec(false, true), want: want{ready: "True/NotCreated", synced: "True/ReconcileSuccess", observed: true}},
		"KeyDeletedAsAsked": {spec: spec(false, true), keyID: "k1", key: key(kms.StateDeleted), before: v1alpha1.PhasePendingDeletion,
			want: want{ready: "True/KeyDeleted", synced: "True/ReconcileSuccess", observed: true, events: []string{"Deleted"}}},

		// Reconciling=True: on the way to the spec.
		"Creating":              {spec: spec(true, false), want: want{ready: "False/Creating", reconciling: "True/Creating", synced: "True/ReconcileSuccess", observed: true}},
		"CreatingInTheKMS":      {spec: spec(true, false), keyID: "k1", key: key(kms.StateCreating), want: want{ready: "False/Creating", reconciling: "True/Creating", synced: "True/ReconcileSuccess", observed: true}},
		"Progressing":           {spec: spec(true, false), keyID: "k1", key: key(kms.StateDisabled), want: want{ready: "False/Progressing", reconciling: "True/Progressing", synced: "True/ReconcileSuccess", observed: true}},
		"Canceling":             {spec: spec(false, false), keyID: "k1", key: key(kms.StatePendingDeletion), want: want{ready: "False/Progressing", reconciling: "True/Progressing", synced: "True/ReconcileSuccess", observed: true}},
		"Importing":             {spec: external(spec(true, false), "material"), keyID: "k1", key: key(kms.StatePendingImport), want: want{ready: "False/Progressing", reconciling: "True/Progressing", synced: "True/ReconcileSuccess", observed: true}},
		"CutShort":              {spec: spec(true, false), keyID: "k1", key: key(kms.StateDisabled), cut: true, want: want{ready: "False/Progressing", reconciling: "True/Progressing"}},
		"ReconcileError":        {spec: spec(true, false), keyID: "k1", key: key(kms.StateDisabled), failure: transient, want: want{ready: "False/Progressing", reconciling: "True/ReconcileError", synced: "False/ReconcileError", events: []string{"Failed"}}},
		"ReconcileErrorSettled": {spec: spec(true, false), keyID: "k1", key: key(kms.StateEnabled), failure: transient, want: want{reconciling: "True/ReconcileError", synced: "False/ReconcileError", events: []string{"Failed"}}},
		"ConflictUnsettled":     {spec: spec(true, false), keyID: "k1", key: key(kms.StateDisabled), failure: conflict, want: want{ready: "False/Progressing"}},
		"KMSUnavailable":        {spec: spec(true, false), keyID: "k1", failure: unavailable, want: want{reconciling: "True/KMSUnavailable", synced: "False/KMSUnavailable", events: []string{"KMSUnavailable"}}},
		"ConflictFactsOnly":     {spec: spec(true, false), keyID: "k1", key: key(kms.StateEnabled), failure: conflict, want: want{}},

		// Stalled=True: only a person can unblock it.
		"KeyDeletedUnasked": {spec: spec(true, false), keyID: "k1", before: v1alpha1.PhaseEnabled,
			want: want{ready: "False/KeyDeleted", stalled: "True/KeyDeleted", synced: "True/ReconcileSuccess", observed: true, events: []string{"Deleted"}}},
		"KeyNotFound":        {spec: spec(true, false), failure: blocked(v1alpha1.ReasonKeyNotFound), want: stalledBy(v1alpha1.ReasonKeyNotFound)},
		"AdoptionRefused":    {spec: spec(true, false), failure: blocked(v1alpha1.ReasonAdoptionRefused), want: stalledBy(v1alpha1.ReasonAdoptionRefused)},
		"KeyOwnedElsewhere":  {spec: spec(true, false), keyID: "k1", failure: blocked(v1alpha1.ReasonKeyOwnedElsewhere), want: stalledBy(v1alpha1.ReasonKeyOwnedElsewhere)},
		"AliasInUse":         {spec: spec(true, false), failure: blocked(v1alpha1.ReasonAliasInUse), want: stalledBy(v1alpha1.ReasonAliasInUse)},
		"AliasReserved":      {spec: spec(true, false), failure: blocked(v1alpha1.ReasonAliasReserved), want: stalledBy(v1alpha1.ReasonAliasReserved)},
		"SpecMismatch":       {spec: spec(true, false), keyID: "k1", key: key(kms.StateEnabled), failure: blocked(v1alpha1.ReasonSpecMismatch), want: stalledBy(v1alpha1.ReasonSpecMismatch)},
		"Unsupported":        {spec: spec(true, false), keyID: "k1", key: key(kms.StateEnabled), failure: Classify(&kms.UnsupportedError{Reason: "no rotation"}, "SetRotation"), want: stalledBy(v1alpha1.ReasonUnsupported)},
		"Rejected":           {spec: spec(true, false), failure: Classify(&kms.RejectedError{Reason: "alias refused"}, "Create"), want: stalledBy(v1alpha1.ReasonRejected)},
		"KeyFrozen":          {spec: spec(true, false), keyID: "k1", failure: Classify(&kms.FrozenError{KeyID: "k1"}, "Enable"), want: stalledBy(v1alpha1.ReasonKeyFrozen)},
		"KeyUnreadable":      {spec: spec(true, false), keyID: "k1", failure: Classify(&kms.UnreadableError{KeyID: "k1", Reason: "damaged"}, "Observing"), want: stalledBy(v1alpha1.ReasonKeyUnreadable)},
		"SecretNotFound":     {spec: external(spec(true, false), "m"), keyID: "k1", key: key(kms.StatePendingImport), failure: imported(v1alpha1.ReasonSecretNotFound), want: importStalled(v1alpha1.ReasonSecretNotFound)},
		"ImportTokenInvalid": {spec: external(spec(true, false), "m"), keyID: "k1", key: key(kms.StatePendingImport), failure: imported(v1alpha1.ReasonImportTokenInvalid), want: importStalled(v1alpha1.ReasonImportTokenInvalid)},
		"MaterialInvalid":    {spec: external(spec(true, false), "m"), keyID: "k1", key: key(kms.StatePendingImport), failure: imported(v1alpha1.ReasonMaterialInvalid), want: importStalled(v1alpha1.ReasonMaterialInvalid)},
		"MaterialMismatch":   {spec: external(spec(true, false), "m"), keyID: "k1", key: key(kms.StatePendingImport), failure: imported(v1alpha1.ReasonMaterialMismatch), want: importStalled(v1alpha1.ReasonMaterialMismatch)},
		"ExpiryPassed":       {spec: external(spec(true, false), "m"), keyID: "k1", key: key(kms.StatePendingImport), failure: imported(v1alpha1.ReasonExpiryPassed), want: importStalled(v1alpha1.ReasonExpiryPassed)},

		// Guard rails.
		"Observed": {spec: observing(spec(true, false)), keyID: "k1", key: key(kms.StateDisabled), want: want{ready: "True/Observed", synced: "True/ReconcileSuccess", observed: true}},
		"ObservedPending": {spec: observing(spec(true, false)), keyID: "k1", key: key(kms.StatePendingDeletion),
			want: want{ready: "True/Observed", synced: "True/ReconcileSuccess", observed: true}},
		"ReconcilePaused": {spec: spec(true, false), keyID: "k1", key: key(kms.StateDisabled), paused: true, want: want{synced: "False/ReconcilePaused", events: []string{"ReconcilePaused"}}},
		"DeletionProtected": {spec: spec(true, false), keyID: "k1", key: key(kms.StateEnabled), deleting: true,
			failure: Classify(&Blocked{Reason: v1alpha1.ReasonDeletionProtected, Message: "clear the protection", Hold: true}, ""),
			want:    stalledBy(v1alpha1.ReasonDeletionProtected)},
		"KeyInUse": {spec: spec(false, false), keyID: "k1", key: key(kms.StateEnabled),
			failure: Classify(&Blocked{Reason: v1alpha1.ReasonKeyInUse, Message: "in use by StorageClass/-/evs", Hold: true}, ""),
			want:    stalledBy(v1alpha1.ReasonKeyInUse)},

		// Deleting: the facts, and failures as in a reconcile.
		"DeletingFactsOnly": {spec: spec(true, false), keyID: "k1", key: key(kms.StateEnabled), deleting: true, want: want{}},
		"DeletingRejected": {spec: spec(true, false), keyID: "k1", key: key(kms.StateEnabled), deleting: true,
			failure: Classify(&kms.RejectedError{Reason: "default key"}, "ScheduleDeletion"), want: stalledBy(v1alpha1.ReasonRejected)},
		"DeletingRetried": {spec: spec(true, false), keyID: "k1", key: key(kms.StateEnabled), deleting: true, failure: transient,
			want: want{reconciling: "True/ReconcileError", synced: "False/ReconcileError", events: []string{"Failed"}}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			before := v1alpha1.CustomerMasterKeyStatus{KeyID: tc.keyID, Phase: tc.before, PendingDays: tc.pending, ObservedGeneration: 1}
			in := Input{
				Planner: planner.Input{Spec: tc.spec, KeyID: tc.keyID, Key: tc.key, Deleting: tc.deleting, PendingDays: tc.pending,
					LastPhase: tc.before, Now: now},
				Name: "db", Namespace: "payments", Generation: 2, Before: before, Status: before, Failure: tc.failure, Cut: tc.cut, Paused: tc.paused,
			}
			st, events := Compute(in)
			got := want{
				ready: show(st, v1alpha1.ConditionReady), reconciling: show(st, v1alpha1.ConditionReconciling),
				stalled: show(st, v1alpha1.ConditionStalled), synced: show(st, v1alpha1.ConditionSynced),
				observed: st.ObservedGeneration == 2,
			}
			for _, e := range events {
				got.events = append(got.events, e.Reason)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(want{})); diff != "" {
				t.Errorf("Compute (-want +got):\n%s", diff)
			}
			for _, c := range st.Conditions {
				if c.Message == "" || c.ObservedGeneration != 2 {
					t.Errorf("condition %s: message %q, observedGeneration %d: want a message, at generation 2", c.Type, c.Message, c.ObservedGeneration)
				}
			}
			if tc.deleting && tc.failure != nil && tc.failure.Kind == Blocking {
				msg := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionStalled).Message
				if says := strings.Contains(msg, "kubectl patch cmk db -n payments"); says == tc.failure.Hold {
					t.Errorf("a blocked deletion says how to let the resource go, a guard rail only what it holds; got %q", msg)
				}
			}
			if tc.paused && st.Phase != tc.before {
				t.Errorf("a paused resource's phase moved from %q to %q", tc.before, st.Phase)
			}
		})
	}

	// Every reason the API declares is decided here, by a case above: adding a reason
	// without a case fails.
	covered := map[string]bool{}
	for _, tc := range cases {
		for _, c := range []string{tc.want.ready, tc.want.reconciling, tc.want.stalled, tc.want.synced} {
			if _, reason, ok := strings.Cut(c, "/"); ok {
				covered[reason] = true
			}
		}
	}
	for _, reason := range declaredReasons(t) {
		if !covered[reason] {
			t.Errorf("reason %s is declared in api/v1alpha1/conditions.go but no case of TestCompute produces it", reason)
		}
	}
}

func observing(s v1alpha1.CustomerMasterKeySpec) v1alpha1.CustomerMasterKeySpec {
	s.ManagementPolicy, s.KeyID = v1alpha1.ManagementPolicyObserve, "k1"
	return s
}

func stalledBy(reason string) want {
	return want{ready: "False/" + reason, stalled: "True/" + reason, synced: "False/" + reason, observed: true, events: []string{WarningReason(reason)}}
}

func importStalled(reason string) want {
	w := stalledBy(reason)
	w.events = []string{v1alpha1.EventImportFailed}
	return w
}

func show(st v1alpha1.CustomerMasterKeyStatus, typ string) string {
	c := meta.FindStatusCondition(st.Conditions, typ)
	if c == nil {
		return ""
	}
	return fmt.Sprintf("%s/%s", c.Status, c.Reason)
}

// declaredReasons reads the reason constants of the API.
func declaredReasons(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("../../api/v1alpha1/conditions.go")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^\s*Reason\w+\s*=\s*"(\w+)"`).FindAllStringSubmatch(string(src), -1) {
		out = append(out, m[1])
	}
	if len(out) < 20 {
		t.Fatalf("found only %d reasons in conditions.go: has its layout changed?", len(out))
	}
	return out
}

// TestRepeatedFailureIsNotReported: a failure status already reports sends no second Warning,
// so retries, resyncs and restarts do not repeat it.
func TestRepeatedFailureIsNotReported(t *testing.T) {
	in := Input{Planner: planner.Input{Spec: spec(true, false), Now: now}, Generation: 1,
		Failure: Classify(&Blocked{Reason: v1alpha1.ReasonKeyNotFound, Message: "no such key"}, "")}
	first, events := Compute(in)
	if len(events) != 1 {
		t.Fatalf("first failure: %d events, want 1", len(events))
	}
	in.Before, in.Status = first, first
	in.Planner.Now = now.Add(time.Hour)
	if _, again := Compute(in); len(again) != 0 {
		t.Errorf("the same failure again: events %+v, want none", again)
	}
	in.Failure = Classify(&Blocked{Reason: v1alpha1.ReasonKeyNotFound, Message: "another message"}, "")
	if _, changed := Compute(in); len(changed) != 1 {
		t.Errorf("a new message: %d events, want 1", len(changed))
	}
}

// TestFailedReadKeepsWhatStatusKnew: a failure with no key read leaves the key's facts as
// they were; a deleted key is only reported from a read that says so.
func TestFailedReadKeepsWhatStatusKnew(t *testing.T) {
	date := metav1.NewTime(now.Add(24 * time.Hour))
	before := v1alpha1.CustomerMasterKeyStatus{KeyID: "k1", Phase: v1alpha1.PhasePendingDeletion, DeletionDate: &date, PendingDays: 7}
	st, _ := Compute(Input{Planner: planner.Input{Spec: spec(false, true), KeyID: "k1", PendingDays: 7, Now: now}, Generation: 1,
		Before: before, Status: before, Failure: Classify(errors.New("timeout"), "Observing")})
	if st.Phase != v1alpha1.PhasePendingDeletion || st.DeletionDate == nil || st.PendingDays != 7 {
		t.Errorf("after a failed read: %+v, want the facts status had", st)
	}
}

// TestSettledMeansNothingToDo: whenever the verdict is Settled, the planner has no call to make,
// and whenever it has one (rotation or tags to put right included), the verdict is not Settled.
func TestSettledMeansNothingToDo(t *testing.T) {
	on := func(days int) *kms.Rotation { return &kms.Rotation{Enabled: true, IntervalDays: days} }
	rotating := func(s v1alpha1.CustomerMasterKeySpec, days int32) v1alpha1.CustomerMasterKeySpec {
		s.Rotation = &v1alpha1.Rotation{Enabled: true, IntervalDays: days}
		return s
	}
	tagged := func(s v1alpha1.CustomerMasterKeySpec, tags map[string]v1alpha1.TagValue) v1alpha1.CustomerMasterKeySpec {
		s.Tags = tags
		return s
	}
	with := func(k *kms.Key, rot *kms.Rotation, tags map[string]string) *kms.Key {
		k.Rotation, k.Tags = rot, tags
		return k
	}
	specs := []v1alpha1.CustomerMasterKeySpec{
		spec(true, false), spec(false, false), spec(false, true), external(spec(true, false), ""), external(spec(false, true), ""),
		external(spec(true, false), "m"), rotating(spec(true, false), 90), rotating(spec(false, false), 30),
		tagged(spec(true, false), map[string]v1alpha1.TagValue{"a": "1"}), tagged(spec(false, false), map[string]v1alpha1.TagValue{"a": "2"}),
	}
	keys := func() []*kms.Key {
		return []*kms.Key{nil, key(kms.StateEnabled), key(kms.StateDisabled), key(kms.StatePendingDeletion), key(kms.StatePendingImport),
			key(kms.StateDeleted), with(key(kms.StateEnabled), on(30), nil), with(key(kms.StateEnabled), &kms.Rotation{}, nil),
			with(key(kms.StateEnabled), nil, map[string]string{"a": "1"}), with(key(kms.StateDisabled), nil, map[string]string{}),
			with(key(kms.StateEnabled), on(90), map[string]string{"a": "1"})}
	}
	for _, s := range specs {
		for _, k := range keys() {
			for _, keyID := range []string{"", "k1"} {
				if k != nil && keyID == "" {
					continue
				}
				// Import parameters are published: issuing them is part of getting there.
				in := planner.Input{Spec: s, KeyID: keyID, Key: k, PendingDays: 7, Now: now, ImportParametersExpireAt: now.Add(24 * time.Hour)}
				if k != nil {
					in.LastPhase = v1alpha1.Phase(k.State)
				}
				v, d := Readiness(in), planner.Next(in)
				idle := d.Action == planner.None
				if (v.Class == Settled) != idle && (v.Class != Stalled || !idle) {
					t.Errorf("spec %+v, key %+v: verdict %s (class %d) but the planner's next action is %s", s, k, v.Reason, v.Class, d.Action)
				}
			}
		}
	}
}
