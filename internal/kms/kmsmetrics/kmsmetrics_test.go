package kmsmetrics_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/huaweicloud"
	"github.com/cmk-operator/cmk-operator/internal/kms/huaweicloud/standin"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmsmetrics"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
)

// TestConformanceThroughTheWrapper runs the suite every provider passes against the Huawei
// stand-in seen through the wrapper: measuring changes none of the calls, and the optional
// interfaces (import here) still reach the provider. The counts it leaves are then checked.
func TestConformanceThroughTheWrapper(t *testing.T) {
	// The counters are the process's: a name of this run's own keeps a second run honest.
	name := fmt.Sprintf("conformance-%d", time.Now().UnixNano())
	kmstest.Run(t, func(t *testing.T) kmstest.Fixture {
		s := standin.Start(time.Now().UTC().Truncate(time.Second))
		t.Cleanup(s.Close)
		dir := t.TempDir()
		for file, value := range map[string]string{"access-key": s.AK, "secret-key": s.SK} {
			if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		p, err := huaweicloud.New(huaweicloud.Config{ProjectID: s.ProjectID, Endpoint: s.URL, CredentialsDir: dir, QPS: 1000})
		if err != nil {
			t.Fatal(err)
		}
		return kmstest.Fixture{
			Provider: kmsmetrics.Instrument(name, p), Late: 24 * time.Hour, Now: s.Clock.Now,
			Advance: func(_ *testing.T, d time.Duration) { s.Advance(d) },
		}
	})
	// What the suite is known to do: create keys, look one up that is not there, be refused a
	// call the state does not allow, an alias in use and bad material, and import.
	for _, c := range []struct{ operation, outcome string }{
		{"create", "success"}, {"observe", "not_found"}, {"schedule_deletion", "success"},
		{"cancel_deletion", "success"}, {"enable", "state_error"}, {"create", "rejected"},
		{"import_material", "rejected"}, {"import_material", "success"}, {"claim", "conflict"},
	} {
		if n := testutil.ToFloat64(kmsmetrics.Requests.WithLabelValues(name, c.operation, c.outcome)); n == 0 {
			t.Errorf("cmk_kms_requests_total{operation=%q,outcome=%q} is 0 after the conformance suite", c.operation, c.outcome)
		}
	}
	if n := testutil.CollectAndCount(kmsmetrics.Duration, "cmk_kms_request_duration_seconds"); n == 0 {
		t.Error("no latency was observed")
	}
}

// bare is a provider with none of the optional interfaces.
type bare struct{ kms.Provider }

func TestAsLooksThroughTheWrapper(t *testing.T) {
	wrapped := kmsmetrics.Instrument("bare", bare{})
	if _, ok := kms.As[kms.Rotator](wrapped); ok {
		t.Error("As found a Rotator in a wrapped provider that has none")
	}
	if _, ok := kms.As[kms.Importer](kmsmetrics.Instrument("twice", wrapped)); ok {
		t.Error("As found an Importer through two wrappers around a provider that has none")
	}
	if _, ok := wrapped.(kms.Tagger); !ok {
		t.Fatal("the wrapper does not pass on Tagger")
	}
	err := wrapped.(kms.Tagger).SetTags(context.Background(), "k", nil)
	if !kms.IsUnsupported(err) {
		t.Errorf("SetTags on a wrapped provider without tags: %v, want an UnsupportedError", err)
	}
	if n := wrapped.(kms.Notifier).Changes(); n != nil {
		t.Error("a wrapped provider without changes of its own delivers some")
	}
}

func TestOutcome(t *testing.T) {
	for err, want := range map[error]string{
		nil:                                              "success",
		&kms.NotFoundError{KeyID: "k"}:                   "not_found",
		&kms.StateError{KeyID: "k"}:                      "state_error",
		&kms.ClaimError{KeyID: "k"}:                      "conflict",
		&kms.RejectedError{Reason: "no"}:                 "rejected",
		&kms.AliasInUseError{Alias: "a"}:                 "rejected",
		&kms.ImportError{Code: kms.ImportTokenInvalid}:   "rejected",
		&kms.UnsupportedError{Reason: "no"}:              "unsupported",
		&kms.UnavailableError{Reason: "creds"}:           "unavailable",
		&kms.FrozenError{KeyID: "k"}:                     "frozen",
		&kms.UnreadableError{KeyID: "k"}:                 "unreadable",
		fmt.Errorf("slow: %w", context.DeadlineExceeded): "timeout",
		context.Canceled:                                 "canceled",
		errors.New("connection reset"):                   "error",
	} {
		if got := kmsmetrics.Outcome(fmt.Errorf("wrapped: %w", err)); err != nil && got != want {
			t.Errorf("Outcome(%v) = %q, want %q", err, got, want)
		}
	}
	if got := kmsmetrics.Outcome(nil); got != "success" {
		t.Errorf("Outcome(nil) = %q", got)
	}
}
