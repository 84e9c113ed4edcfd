package planner

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// spec is the spec of a test key (testenv.Key), enabled and scheduled for deletion as asked.
func spec(enabled, scheduled bool) v1alpha1.CustomerMasterKeySpec {
	s := testenv.Key("", "").Spec
	s.Enabled, s.DeletionScheduled = enabled, scheduled
	return s
}

func protected(s v1alpha1.CustomerMasterKeySpec) v1alpha1.CustomerMasterKeySpec {
	s.DeletionProtection = true
	return s
}

func observed(s v1alpha1.CustomerMasterKeySpec) v1alpha1.CustomerMasterKeySpec {
	s.ManagementPolicy, s.KeyID = v1alpha1.ManagementPolicyObserve, "k1"
	return s
}

func key(state kms.State) *kms.Key {
	k := &kms.Key{ID: "k1", State: state, HasMaterial: true}
	if state == kms.StatePendingDeletion {
		k.DeletionDate = now.Add(7 * 24 * time.Hour)
	}
	return k
}

// pendingUntil is a key pending deletion at date.
func pendingUntil(date time.Time) *kms.Key {
	k := key(kms.StatePendingDeletion)
	k.DeletionDate = date
	return k
}

func external(s v1alpha1.CustomerMasterKeySpec, withMaterial bool) v1alpha1.CustomerMasterKeySpec {
	s.Origin = v1alpha1.OriginExternal
	if withMaterial {
		s.KeyMaterial = &v1alpha1.KeyMaterial{SecretRef: v1alpha1.LocalSecretReference{Name: "material"}}
	}
	return s
}

func withDescription(s v1alpha1.CustomerMasterKeySpec, d string) v1alpha1.CustomerMasterKeySpec {
	s.Description = d
	return s
}

func TestMismatch(t *testing.T) {
	k := &kms.Key{ID: "k1", KeySpec: "RSA_2048", KeyUsage: "SIGN_VERIFY", Origin: "KMS"}
	got := Mismatch(spec(true, false), k)
	for _, want := range []string{"keySpec is RSA_2048, not AES_256", "keyUsage is SIGN_VERIFY, not ENCRYPT_DECRYPT"} {
		if !strings.Contains(got, want) {
			t.Errorf("Mismatch = %q, want it to say %q", got, want)
		}
	}
	if strings.Contains(got, "origin") {
		t.Errorf("Mismatch = %q reports a matching origin", got)
	}
	if m := Mismatch(spec(true, false), &kms.Key{ID: "k1", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: "KMS"}); m != "" {
		t.Errorf("a matching key: %q", m)
	}
}

func noMaterial() *kms.Key {
	k := key(kms.StatePendingImport)
	k.HasMaterial, k.Origin = false, kms.OriginExternal
	return k
}

func expiring() *kms.Key {
	k := key(kms.StateEnabled)
	k.Origin, k.MaterialExpiresAt = kms.OriginExternal, now.Add(time.Hour)
	return k
}

func withDays(s v1alpha1.CustomerMasterKeySpec, days int32) v1alpha1.CustomerMasterKeySpec {
	s.PendingDays = days
	return s
}

func overdueBy(d time.Duration) *kms.Key {
	k := key(kms.StatePendingDeletion)
	k.DeletionDate = now.Add(-d)
	return k
}

func expiredBy(d time.Duration) *kms.Key {
	k := expiring()
	k.MaterialExpiresAt = now.Add(-d)
	return k
}

func TestNext(t *testing.T) {
	overdue := key(kms.StatePendingDeletion)
	overdue.DeletionDate = now.Add(-time.Second)
	described := key(kms.StateEnabled)
	described.Description = "old"
	withPolicy := func(s v1alpha1.CustomerMasterKeySpec, p v1alpha1.DeletionPolicy) v1alpha1.CustomerMasterKeySpec {
		s.DeletionPolicy = p
		return s
	}

	cases := map[string]struct {
		reason string
		in     Input
		want   Decision
	}{
		"NewKey": {
			reason: "A resource with no key ID gets a key.",
			in:     Input{Spec: spec(true, false)},
			want:   Decision{Action: Create},
		},
		"ProtectedNotScheduled": {
			reason: "A spec that asks for the deletion of a protected key (stored before the CRD refused it) is held, not carried out.",
			in:     Input{Spec: protected(spec(false, true)), KeyID: "k1", Key: key(kms.StateDisabled)},
			want:   Decision{Action: None, Hold: v1alpha1.ReasonDeletionProtected},
		},
		"ProtectedStillEnabledAndDisabled": {
			reason: "Protection guards the deletion only: the key is disabled as asked.",
			in:     Input{Spec: protected(spec(false, false)), KeyID: "k1", Key: key(kms.StateEnabled)},
			want:   Decision{Action: Disable},
		},
		"ProtectedDeleteOnDelete": {
			reason: "deletionPolicy Delete on a protected resource being deleted: the resource waits, nothing is scheduled.",
			in:     Input{Spec: withPolicy(protected(spec(true, false)), v1alpha1.DeletionPolicyDelete), KeyID: "k1", Key: key(kms.StateEnabled), Deleting: true},
			want:   Decision{Action: None, Hold: v1alpha1.ReasonDeletionProtected},
		},
		"ProtectedPendingOnDelete": {
			reason: "A protected key pending deletion (scheduled outside, or a cancel not acted on yet) with deletionPolicy Delete: " +
				"the protected spec asks for no deletion, so it is canceled before the resource is held; else the KMS would delete the key " +
				"at its date, and the resource would go with it.",
			in:   Input{Spec: withPolicy(protected(spec(true, false)), v1alpha1.DeletionPolicyDelete), KeyID: "k1", Key: key(kms.StatePendingDeletion), Deleting: true},
			want: Decision{Action: CancelDeletion},
		},
		"ProtectedRetainOnDelete": {
			reason: "deletionPolicy Retain asks for no deletion: a protected resource goes as any other.",
			in:     Input{Spec: protected(spec(true, false)), KeyID: "k1", Key: key(kms.StateEnabled), Deleting: true},
			want:   Decision{Action: Release},
		},
		"InUseNotDisabled": {
			reason: "A key in use is not disabled: the rest of the spec is applied, the disable waits.",
			in:     Input{Spec: spec(false, false), KeyID: "k1", Key: key(kms.StateEnabled), InUse: true},
			want:   Decision{Action: None, Hold: v1alpha1.ReasonKeyInUse},
		},
		"InUseDescribedFirst": {
			reason: "What the spec asks besides the disable is carried out on a key in use.",
			in:     Input{Spec: withDescription(spec(false, false), "new"), KeyID: "k1", Key: key(kms.StateEnabled), InUse: true},
			want:   Decision{Action: SetDescription},
		},
		"InUseNotScheduled": {
			reason: "A key in use is not scheduled for deletion.",
			in:     Input{Spec: spec(false, true), KeyID: "k1", Key: key(kms.StateDisabled), InUse: true},
			want:   Decision{Action: None, Hold: v1alpha1.ReasonKeyInUse},
		},
		"InUseStillEnabled": {
			reason: "A key in use may be enabled: the guard holds only what would stop its consumers.",
			in:     Input{Spec: spec(true, false), KeyID: "k1", Key: key(kms.StateDisabled), InUse: true},
			want:   Decision{Action: Enable},
		},
		"InUseDeletionCanceled": {
			reason: "A deletion the spec no longer asks for is canceled on a key in use, as on any other.",
			in:     Input{Spec: spec(false, false), KeyID: "k1", Key: key(kms.StatePendingDeletion), InUse: true},
			want:   Decision{Action: CancelDeletion},
		},
		"InUseDeleteOnDelete": {
			reason: "deletionPolicy Delete on a resource being deleted whose key is in use: the resource waits, nothing is scheduled.",
			in:     Input{Spec: withPolicy(spec(true, false), v1alpha1.DeletionPolicyDelete), KeyID: "k1", Key: key(kms.StateEnabled), Deleting: true, InUse: true},
			want:   Decision{Action: None, Hold: v1alpha1.ReasonKeyInUse},
		},
		"InUseRetainOnDelete": {
			reason: "deletionPolicy Retain asks nothing of the key: a resource whose key is in use goes as any other.",
			in:     Input{Spec: spec(true, false), KeyID: "k1", Key: key(kms.StateEnabled), Deleting: true, InUse: true},
			want:   Decision{Action: Release},
		},
		"ObserveNeverActs": {
			reason: "managementPolicy Observe makes no call, whatever the spec and the key say.",
			in:     Input{Spec: observed(spec(false, true)), KeyID: "k1", Key: key(kms.StateEnabled)},
			want:   Decision{Action: None},
		},
		"ObservePendingRechecked": {
			reason: "An observed key pending deletion is looked at again at its date.",
			in:     Input{Spec: observed(spec(true, false)), KeyID: "k1", Key: key(kms.StatePendingDeletion)},
			want:   Decision{Action: None, RecheckAt: now.Add(7 * 24 * time.Hour)},
		},
		"ObserveDeleteLeavesKey": {
			reason: "Deleting an observed resource never touches the key, whatever deletionPolicy says.",
			in:     Input{Spec: withPolicy(observed(spec(true, false)), v1alpha1.DeletionPolicyDelete), KeyID: "k1", Key: key(kms.StateEnabled), Deleting: true},
			want:   Decision{Action: Release},
		},
		"NewKeyScheduledForDeletion": {
			reason: "A key is never created only to be deleted.",
			in:     Input{Spec: spec(false, true)},
			want:   Decision{Action: None},
		},
		"KeyGoneFromKMS": {
			reason: "A key the KMS no longer has is never replaced by a new one.",
			in:     Input{Spec: spec(true, false), KeyID: "k1"},
			want:   Decision{Action: None},
		},
		"Deleted": {
			reason: "Deleted is terminal, whatever the spec says.",
			in:     Input{Spec: spec(true, false), KeyID: "k1", Key: key(kms.StateDeleted)},
			want:   Decision{Action: None},
		},
		"Creating": {
			reason: "A key still being created is looked at again soon.",
			in:     Input{Spec: spec(true, false), KeyID: "k1", Key: key(kms.StateCreating)},
			want:   Decision{Action: None, RecheckAt: now.Add(CreatingRecheck)},
		},
		"EnabledMatches": {
			in:   Input{Spec: spec(true, false), KeyID: "k1", Key: key(kms.StateEnabled)},
			want: Decision{Action: None},
		},
		"EnabledWantDisabled": {
			in:   Input{Spec: spec(false, false), KeyID: "k1", Key: key(kms.StateEnabled)},
			want: Decision{Action: Disable},
		},
		"DisabledWantEnabled": {
			reason: "Enabling after a cancel is the spec's explicit step.",
			in:     Input{Spec: spec(true, false), KeyID: "k1", Key: key(kms.StateDisabled)},
			want:   Decision{Action: Enable},
		},
		"DisabledMatches": {
			in:   Input{Spec: spec(false, false), KeyID: "k1", Key: key(kms.StateDisabled)},
			want: Decision{Action: None},
		},
		"EnabledScheduleDeletion": {
			reason: "The KMS schedules deletion from Enabled directly.",
			in:     Input{Spec: spec(false, true), KeyID: "k1", Key: key(kms.StateEnabled)},
			want:   Decision{Action: ScheduleDeletion},
		},
		"DisabledScheduleDeletion": {
			in:   Input{Spec: spec(false, true), KeyID: "k1", Key: key(kms.StateDisabled)},
			want: Decision{Action: ScheduleDeletion},
		},
		"PendingImportScheduleDeletion": {
			in:   Input{Spec: spec(false, true), KeyID: "k1", Key: key(kms.StatePendingImport)},
			want: Decision{Action: ScheduleDeletion},
		},
		"PendingDeletionWaitsForDate": {
			reason: "A key pending deletion is looked at again at its deletion date, not polled.",
			in:     Input{Spec: spec(false, true), KeyID: "k1", Key: key(kms.StatePendingDeletion), PendingDays: 7, Now: now},
			want:   Decision{Action: None, RecheckAt: now.Add(7 * 24 * time.Hour)},
		},
		"PendingDeletionWindowChanged": {
			reason: "pendingDays changed while the deletion was canceled and scheduled again, seen as one edit: " +
				"cancel, to schedule again with the new window (docs/lifecycle.md, Deletion dates).",
			in:   Input{Spec: withDays(spec(false, true), 30), KeyID: "k1", Key: key(kms.StatePendingDeletion), PendingDays: 7, LastPhase: v1alpha1.PhasePendingDeletion},
			want: Decision{Action: CancelDeletion},
		},
		"PendingDeletionWindowUnrecorded": {
			reason: "Pending with no window recorded and a date earlier than the spec's window from now: schedule again, only ever later.",
			in:     Input{Spec: spec(false, true), KeyID: "k1", Key: pendingUntil(now.Add(6 * 24 * time.Hour)), LastPhase: v1alpha1.PhaseEnabled},
			want:   Decision{Action: CancelDeletion},
		},
		"PendingDeletionStatusLost": {
			reason: "Scheduled a moment ago and its status write lost (a crash, a change of leader): the date is the spec's window, and stands.",
			in:     Input{Spec: spec(false, true), KeyID: "k1", Key: key(kms.StatePendingDeletion), LastPhase: v1alpha1.PhaseEnabled, Now: now.Add(time.Second)},
			want:   Decision{Action: None, RecheckAt: now.Add(7 * 24 * time.Hour)},
		},
		"PendingDeletionAdoptedKeepsDate": {
			reason: "A deletion scheduled outside Kubernetes on an adopted key keeps its date.",
			in:     Input{Spec: spec(false, true), KeyID: "k1", Key: key(kms.StatePendingDeletion), Adopted: true},
			want:   Decision{Action: None, RecheckAt: now.Add(7 * 24 * time.Hour)},
		},
		"PendingDeletionWithoutWindowRescheduled": {
			reason: "A key status reported pending with no window (a reconcile failed halfway through rescheduling, " +
				"or it was scheduled before windows were recorded) is scheduled again: only ever later.",
			in:   Input{Spec: spec(false, true), KeyID: "k1", Key: pendingUntil(now.Add(6 * 24 * time.Hour)), LastPhase: v1alpha1.PhasePendingDeletion},
			want: Decision{Action: CancelDeletion},
		},
		"PendingDeletionOverdue": {
			reason: "Past the date the KMS has not deleted it yet: look again shortly.",
			in:     Input{Spec: spec(false, true), KeyID: "k1", Key: overdue, PendingDays: 7, Now: now},
			want:   Decision{Action: None, RecheckAt: now.Add(OverdueRecheck)},
		},
		"PendingDeletionLongOverdue": {
			reason: "The longer the KMS is late, the longer the wait: a backoff, never a hot loop.",
			in:     Input{Spec: spec(false, true), KeyID: "k1", Key: overdueBy(10 * time.Minute), PendingDays: 7, Now: now},
			want:   Decision{Action: None, RecheckAt: now.Add(10 * time.Minute)},
		},
		"PendingDeletionCancel": {
			reason: "Clearing deletionScheduled cancels the deletion (the seed).",
			in:     Input{Spec: spec(false, false), KeyID: "k1", Key: key(kms.StatePendingDeletion)},
			want:   Decision{Action: CancelDeletion},
		},
		"PendingDeletionCancelThenEnable": {
			reason: "Cancel comes first; enabling is a later, separate action.",
			in:     Input{Spec: spec(true, false), KeyID: "k1", Key: key(kms.StatePendingDeletion)},
			want:   Decision{Action: CancelDeletion},
		},
		"PendingImportWantEnabled": {
			reason: "Only imported material moves a PendingImport key on; no call is made.",
			in:     Input{Spec: spec(true, false), KeyID: "k1", Key: key(kms.StatePendingImport)},
			want:   Decision{Action: None},
		},
		"ExternalNeedsImportParameters": {
			reason: "An External key without material publishes parameters to wrap it with.",
			in:     Input{Spec: external(spec(true, false), false), KeyID: "k1", Key: noMaterial()},
			want:   Decision{Action: IssueImportParameters},
		},
		"ExternalParametersFresh": {
			reason: "Published parameters are replaced an hour before they expire, not before.",
			in:     Input{Spec: external(spec(true, false), false), KeyID: "k1", Key: noMaterial(), ImportParametersExpireAt: now.Add(20 * time.Hour)},
			want:   Decision{Action: None, RecheckAt: now.Add(19 * time.Hour)},
		},
		"ExternalParametersExpiring": {
			in:   Input{Spec: external(spec(true, false), false), KeyID: "k1", Key: noMaterial(), ImportParametersExpireAt: now.Add(30 * time.Minute)},
			want: Decision{Action: IssueImportParameters},
		},
		"ExternalImport": {
			reason: "Material named by the spec is imported, whether or not the key is to be enabled.",
			in:     Input{Spec: external(spec(false, false), true), KeyID: "k1", Key: noMaterial(), ImportParametersExpireAt: now.Add(20 * time.Hour)},
			want:   Decision{Action: ImportMaterial},
		},
		"ExternalScheduledBeforeImport": {
			in:   Input{Spec: external(spec(false, true), true), KeyID: "k1", Key: noMaterial()},
			want: Decision{Action: ScheduleDeletion},
		},
		"ExternalMaterialExpiredPublishesParameters": {
			reason: "After material expired, fresh parameters are published even while spec.keyMaterial is set.",
			in:     Input{Spec: external(spec(true, false), true), KeyID: "k1", Key: noMaterial()},
			want:   Decision{Action: IssueImportParameters},
		},
		"ExternalImportWithParametersExpiring": {
			reason: "Material wrapped with parameters about to expire is imported, not voided by new parameters.",
			in:     Input{Spec: external(spec(true, false), true), KeyID: "k1", Key: noMaterial(), ImportParametersExpireAt: now.Add(30 * time.Minute)},
			want:   Decision{Action: ImportMaterial},
		},
		"ImportedMaterialOverdue": {
			reason: "Material past its expiry that the KMS has not removed yet (Huawei: up to 24 h) is looked at with backoff.",
			in:     Input{Spec: external(spec(true, false), true), KeyID: "k1", Key: expiredBy(3 * time.Minute)},
			want:   Decision{Action: None, RecheckAt: now.Add(3 * time.Minute)},
		},
		"ImportedMaterialExpires": {
			reason: "A key whose material expires is looked at again when it does.",
			in:     Input{Spec: external(spec(true, false), true), KeyID: "k1", Key: expiring()},
			want:   Decision{Action: None, RecheckAt: now.Add(time.Hour)},
		},
		"DescriptionChanged": {
			in:   Input{Spec: withDescription(spec(true, false), "new"), KeyID: "k1", Key: described},
			want: Decision{Action: SetDescription},
		},
		"EmptyDescriptionLeavesKeysAlone": {
			reason: "An adopted key keeps its description when the spec gives none.",
			in:     Input{Spec: spec(true, false), KeyID: "k1", Key: described},
			want:   Decision{Action: None},
		},
		"DeleteRetain": {
			in:   Input{Spec: spec(true, false), KeyID: "k1", Key: key(kms.StateEnabled), Deleting: true},
			want: Decision{Action: Release},
		},
		"DeletePolicyDelete": {
			in:   Input{Spec: withPolicy(spec(true, false), v1alpha1.DeletionPolicyDelete), KeyID: "k1", Key: key(kms.StateEnabled), Deleting: true},
			want: Decision{Action: ScheduleDeletion},
		},
		"DeletePolicyDeleteAlreadyPending": {
			reason: "The resource does not wait out the deletion window.",
			in:     Input{Spec: withPolicy(spec(false, true), v1alpha1.DeletionPolicyDelete), KeyID: "k1", Key: key(kms.StatePendingDeletion), PendingDays: 7, Deleting: true},
			want:   Decision{Action: Release},
		},
		"DeleteRetainAfterCancelNotActedOn": {
			reason: "The last spec canceled the deletion and the policy retains the key: cancel it, then let go.",
			in:     Input{Spec: spec(false, false), KeyID: "k1", Key: key(kms.StatePendingDeletion), PendingDays: 7, Deleting: true},
			want:   Decision{Action: CancelDeletion},
		},
		"DeleteWithNewWindowNotActedOn": {
			reason: "Deleting the resource does not keep a date the last spec's pendingDays no longer allows.",
			in: Input{Spec: withDays(spec(false, true), 30), KeyID: "k1", Key: key(kms.StatePendingDeletion), PendingDays: 7,
				LastPhase: v1alpha1.PhasePendingDeletion, Deleting: true},
			want: Decision{Action: CancelDeletion},
		},
		"DeleteRetainScheduledSpec": {
			reason: "A deletion the spec asked for stands when the resource goes, whatever the policy.",
			in:     Input{Spec: spec(false, true), KeyID: "k1", Key: key(kms.StateDisabled), Deleting: true},
			want:   Decision{Action: ScheduleDeletion},
		},
		"DeleteNeverCreated": {
			in:   Input{Spec: withPolicy(spec(true, false), v1alpha1.DeletionPolicyDelete), Deleting: true},
			want: Decision{Action: Release},
		},
		"DeleteDeletedKey": {
			in:   Input{Spec: withPolicy(spec(true, false), v1alpha1.DeletionPolicyDelete), KeyID: "k1", Key: key(kms.StateDeleted), Deleting: true},
			want: Decision{Action: Release},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if tc.in.Now.IsZero() {
				tc.in.Now = now
			}
			if diff := cmp.Diff(tc.want, Next(tc.in)); diff != "" {
				t.Errorf("%s\nNext(...): -want, +got:\n%s", tc.reason, diff)
			}
		})
	}
}

// allowed is the lifecycle table of docs/lifecycle.md: the calls each state permits.
var allowed = map[kms.State][]Action{
	kms.StateEnabled:         {Disable, ScheduleDeletion, SetDescription},
	kms.StateDisabled:        {Enable, ScheduleDeletion, SetDescription},
	kms.StatePendingImport:   {ScheduleDeletion, SetDescription, IssueImportParameters, ImportMaterial},
	kms.StatePendingDeletion: {CancelDeletion},
	kms.StateDeleted:         {},
	kms.StateCreating:        {},
}

// TestNextOnlyAllowedCalls walks every state × spec combination and checks that the planner
// only asks for calls the state allows, never recreates a key, and always settles.
func TestNextOnlyAllowedCalls(t *testing.T) {
	states := []kms.State{kms.StateCreating, kms.StateEnabled, kms.StateDisabled, kms.StatePendingDeletion, kms.StatePendingImport, kms.StateDeleted}
	for _, state := range states {
		for _, enabled := range []bool{true, false} {
			for _, scheduled := range []bool{true, false} {
				for _, deleting := range []bool{true, false} {
					for _, policy := range []v1alpha1.DeletionPolicy{v1alpha1.DeletionPolicyRetain, v1alpha1.DeletionPolicyDelete} {
						for _, origin := range []string{"KMS", "External", "ExternalWithMaterial"} {
							for _, rail := range []string{"", "protected", "observed"} {
								s := spec(enabled, scheduled)
								if origin != "KMS" {
									s = external(s, origin == "ExternalWithMaterial")
								}
								s.DeletionPolicy = policy
								switch rail {
								case "protected":
									s = protected(s)
								case "observed":
									s = observed(s)
								}
								in := Input{Spec: s, KeyID: "k1", Key: key(state), Deleting: deleting, Now: now}
								d := Next(in)
								// The guard rails, whatever the state and spec: an observed key gets no call,
								// a protected one never a deletion.
								if rail == "observed" && d.Action != None && d.Action != Release {
									t.Errorf("observed, state %s, %+v: %s", state, s, d.Action)
								}
								if rail == "protected" && d.Action == ScheduleDeletion {
									t.Errorf("protected, state %s, %+v: ScheduleDeletion", state, s)
								}
								switch d.Action {
								case None, Release:
									continue
								case Create:
									t.Errorf("%s %+v: Create for a key that exists", state, in)
									continue
								}
								ok := false
								for _, a := range allowed[state] {
									ok = ok || a == d.Action
								}
								if !ok {
									t.Errorf("state %s, enabled=%v scheduled=%v deleting=%v policy=%s: %s is not allowed from %s",
										state, enabled, scheduled, deleting, policy, d.Action, state)
								}
								if settled := settle(t, in); settled > 3 {
									t.Errorf("state %s, enabled=%v scheduled=%v origin=%s: took %d actions to settle", state, enabled, scheduled, origin, settled)
								}
							}
						}
					}
				}
			}
		}
	}
}

// settle applies the planner's actions to a model of the KMS until it asks for none, and
// returns how many it took.
func settle(t *testing.T, in Input) int {
	t.Helper()
	k := *in.Key
	for n := 0; n < 10; n++ {
		in.Key = &k
		switch Next(in).Action {
		case None, Release:
			return n
		case Enable:
			k.State = kms.StateEnabled
		case Disable:
			k.State = kms.StateDisabled
		case ScheduleDeletion:
			k.State, k.DeletionDate, in.PendingDays = kms.StatePendingDeletion, now.Add(time.Hour), in.Spec.PendingDays
		case CancelDeletion:
			k.State, in.PendingDays = kms.StateDisabled, 0
		case SetDescription:
			k.Description = in.Spec.Description
		case IssueImportParameters:
			in.ImportParametersExpireAt = now.Add(24 * time.Hour)
		case ImportMaterial:
			k.State, k.HasMaterial = kms.StateEnabled, true
		}
	}
	t.Fatalf("no settled state after 10 actions from %+v", in)
	return 0
}

// TestWindow is the deletion-date rule of docs/lifecycle.md: a key pending deletion keeps its date only
// when the date follows the spec's pendingDays, or was set outside Kubernetes on a key the
// operator adopted (or knew pending before windows were recorded).
func TestWindow(t *testing.T) {
	cases := map[string]struct {
		in   Input
		want WindowVerdict
	}{
		"SameWindow":           {Input{Spec: spec(false, true), PendingDays: 7}, Keep},
		"LongerWindow":         {Input{Spec: withDays(spec(false, true), 30), PendingDays: 7, LastPhase: v1alpha1.PhasePendingDeletion}, Reschedule},
		"ShorterWindow":        {Input{Spec: spec(false, true), PendingDays: 30, LastPhase: v1alpha1.PhasePendingDeletion}, Reschedule},
		"AdoptedFirstLook":     {Input{Spec: spec(false, true), Adopted: true}, Accept},
		"AdoptedWindowChange":  {Input{Spec: withDays(spec(false, true), 30), PendingDays: 7, Adopted: true, LastPhase: v1alpha1.PhasePendingDeletion}, Reschedule},
		"KnownPendingNoWindow": {Input{Spec: spec(false, true), LastPhase: v1alpha1.PhasePendingDeletion}, Reschedule},
		"AdoptedLaterNoWindow": {Input{Spec: spec(false, true), Adopted: true, LastPhase: v1alpha1.PhasePendingDeletion}, Reschedule},
		"MovedEarlierOutside": {Input{Spec: spec(false, true), PendingDays: 7, Key: key(kms.StatePendingDeletion),
			DeletionDate: now.Add(8 * 24 * time.Hour), LastPhase: v1alpha1.PhasePendingDeletion}, Reschedule},
		"MovedLaterOutside": {Input{Spec: spec(false, true), PendingDays: 7, Key: key(kms.StatePendingDeletion),
			DeletionDate: now.Add(6 * 24 * time.Hour), LastPhase: v1alpha1.PhasePendingDeletion}, Keep},
		"CrashAfterSchedule": {Input{Spec: spec(false, true), LastPhase: v1alpha1.PhaseDisabled}, Reschedule},
		"StatusLostRightAfterSchedule": {Input{Spec: spec(false, true), Key: key(kms.StatePendingDeletion), Now: now.Add(time.Minute),
			LastPhase: v1alpha1.PhaseEnabled}, Accept},
		"UnrecordedAndEarlier": {Input{Spec: spec(false, true), Key: key(kms.StatePendingDeletion), Now: now.Add(time.Hour),
			LastPhase: v1alpha1.PhaseEnabled}, Reschedule},
		"UnrecordedLaterInConsole": {Input{Spec: spec(false, true), Key: pendingUntil(now.Add(30 * 24 * time.Hour)), Now: now,
			LastPhase: v1alpha1.PhaseEnabled}, Reschedule},
		"UnrecordedShorterWindow": {Input{Spec: withDays(spec(false, true), 30), Key: key(kms.StatePendingDeletion), Now: now,
			LastPhase: v1alpha1.PhasePendingDeletion}, Reschedule},
		"OwnKeyFirstLook": {Input{Spec: spec(false, true)}, Reschedule},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := Window(tc.in); got != tc.want {
				t.Errorf("Window(%+v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

func TestDrift(t *testing.T) {
	cases := map[string]struct {
		last        v1alpha1.Phase
		specChanged bool
		key         *kms.Key
		action      Action
		want        bool
	}{
		"DisabledOutsideKubernetes":  {v1alpha1.PhaseEnabled, false, key(kms.StateDisabled), Enable, true},
		"ScheduledOutsideKubernetes": {v1alpha1.PhaseEnabled, false, key(kms.StatePendingDeletion), CancelDeletion, true},
		"SpecChanged":                {v1alpha1.PhaseEnabled, true, key(kms.StateEnabled), Disable, false},
		"DeletedAtDate":              {v1alpha1.PhasePendingDeletion, false, key(kms.StateDeleted), None, false},
		"FirstLook":                  {"", false, key(kms.StateEnabled), None, false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := Drift(tc.last, tc.specChanged, tc.key, Decision{Action: tc.action}); got != tc.want {
				t.Errorf("Drift(...) = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRotationAndTags covers when rotation and tags change: only once read, rotation only on
// an Enabled key (before a Disable the spec also asks for), tags not while the deletion is
// pending, and never a call when the key already matches.
func TestRotationAndTags(t *testing.T) {
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
	on := func(days int) *kms.Rotation { return &kms.Rotation{Enabled: true, IntervalDays: days} }
	cases := map[string]struct {
		spec v1alpha1.CustomerMasterKeySpec
		key  *kms.Key
		want Action
	}{
		"RotationNotRead":           {rotating(spec(true, false), 30), key(kms.StateEnabled), None},
		"TurnOn":                    {rotating(spec(true, false), 30), with(key(kms.StateEnabled), &kms.Rotation{}, nil), SetRotation},
		"DefaultInterval":           {rotating(spec(true, false), 0), with(key(kms.StateEnabled), on(365), nil), None},
		"NewInterval":               {rotating(spec(true, false), 90), with(key(kms.StateEnabled), on(30), nil), SetRotation},
		"TurnOff":                   {spec(true, false), with(key(kms.StateEnabled), on(30), nil), SetRotation},
		"OffAndOff":                 {spec(true, false), with(key(kms.StateEnabled), &kms.Rotation{IntervalDays: 30}, nil), None},
		"BeforeDisabling":           {rotating(spec(false, false), 30), with(key(kms.StateEnabled), &kms.Rotation{}, nil), SetRotation},
		"NotOnADisabledKey":         {rotating(spec(false, false), 30), with(key(kms.StateDisabled), &kms.Rotation{}, nil), None},
		"NotWhilePending":           {rotating(spec(false, true), 30), with(key(kms.StatePendingDeletion), &kms.Rotation{}, nil), None},
		"EnableFirstThenRotation":   {rotating(spec(true, false), 30), with(key(kms.StateDisabled), &kms.Rotation{}, nil), Enable},
		"TagsNotRead":               {tagged(spec(true, false), map[string]v1alpha1.TagValue{"a": "1"}), key(kms.StateEnabled), None},
		"AddTags":                   {tagged(spec(true, false), map[string]v1alpha1.TagValue{"a": "1"}), with(key(kms.StateEnabled), nil, map[string]string{}), SetTags},
		"ChangeTag":                 {tagged(spec(true, false), map[string]v1alpha1.TagValue{"a": "2"}), with(key(kms.StateEnabled), nil, map[string]string{"a": "1"}), SetTags},
		"RemoveTags":                {spec(true, false), with(key(kms.StateEnabled), nil, map[string]string{"a": "1"}), SetTags},
		"SameTags":                  {tagged(spec(true, false), map[string]v1alpha1.TagValue{"a": "1"}), with(key(kms.StateEnabled), nil, map[string]string{"a": "1"}), None},
		"TagsOfADisabledKey":        {tagged(spec(false, false), map[string]v1alpha1.TagValue{"a": "1"}), with(key(kms.StateDisabled), nil, map[string]string{}), SetTags},
		"NoTagsWhilePending":        {tagged(spec(false, true), map[string]v1alpha1.TagValue{"a": "1"}), with(key(kms.StatePendingDeletion), nil, map[string]string{}), None},
		"CancelBeforeTags":          {tagged(spec(false, false), map[string]v1alpha1.TagValue{"a": "1"}), with(key(kms.StatePendingDeletion), nil, map[string]string{}), CancelDeletion},
		"ScheduleBeforeRotationOff": {spec(false, true), with(key(kms.StateEnabled), on(30), nil), ScheduleDeletion},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			in := Input{Spec: tc.spec, KeyID: "k1", Key: tc.key, LastPhase: v1alpha1.Phase(tc.key.State), Now: now, PendingDays: 7}
			if got := Next(in).Action; got != tc.want {
				t.Errorf("Next = %s, want %s", got, tc.want)
			}
		})
	}
}
