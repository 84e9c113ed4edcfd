// Package kmsmetrics measures a KMS provider's calls on the manager's metrics endpoint: how many,
// by provider, operation and outcome, and how long they take. It wraps the provider, so every
// provider is measured the same way and none of them knows about it.
package kmsmetrics

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

var (
	// Requests is cmk_kms_requests_total{provider, operation, outcome}.
	Requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cmk_kms_requests_total",
		Help: "Calls the operator made to the KMS provider, by provider, operation (create, schedule_deletion, ...) and outcome (success, or why not: not_found, state_error, conflict, rejected, unsupported, unavailable, frozen, unreadable, timeout, canceled, error).",
	}, []string{"provider", "operation", "outcome"})
	// Duration is cmk_kms_request_duration_seconds{provider, operation}.
	Duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "cmk_kms_request_duration_seconds",
		Help: "How long calls to the KMS provider took, by provider and operation, retries of throttled requests included.",
		// From an in-cluster KMS answering in milliseconds to a cloud KMS retrying a
		// request for most of a minute (Huawei: five attempts of up to 8 s each, with
		// backoff between them, about 43 s): 5 ms to 82 s.
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 15),
	}, []string{"provider", "operation"})
)

func init() { metrics.Registry.MustRegister(Requests, Duration) }

// Outcomes of a call, the values of the outcome label. Each is a kind of error of the kms
// package, so the label has a fixed, small set of values whatever the KMS answers.
const (
	OutcomeSuccess     = "success"
	OutcomeNotFound    = "not_found"
	OutcomeStateError  = "state_error"
	OutcomeConflict    = "conflict"
	OutcomeRejected    = "rejected"
	OutcomeUnsupported = "unsupported"
	OutcomeUnavailable = "unavailable"
	OutcomeFrozen      = "frozen"
	OutcomeUnreadable  = "unreadable"
	OutcomeTimeout     = "timeout"
	OutcomeCanceled    = "canceled"
	OutcomeError       = "error"
)

// Outcome names the kind of err.
func Outcome(err error) string {
	var state *kms.StateError
	switch {
	case err == nil:
		return OutcomeSuccess
	case kms.IsNotFound(err):
		return OutcomeNotFound
	case errors.As(err, &state):
		return OutcomeStateError
	case kms.IsClaimLost(err):
		return OutcomeConflict
	case kms.IsUnsupported(err):
		return OutcomeUnsupported
	case kms.IsTerminal(err) || kms.AsImportError(err) != nil:
		return OutcomeRejected
	case kms.AsUnavailable(err) != nil:
		return OutcomeUnavailable
	case kms.IsFrozen(err):
		return OutcomeFrozen
	case kms.IsUnreadable(err):
		return OutcomeUnreadable
	case errors.Is(err, context.DeadlineExceeded):
		return OutcomeTimeout
	case errors.Is(err, context.Canceled):
		return OutcomeCanceled // the manager stopping, not the KMS failing
	default:
		return OutcomeError
	}
}

// Instrument wraps p, the provider registered as name, so that its calls are measured. The
// wrapper passes on every optional interface p has; kms.As finds them through it.
func Instrument(name string, p kms.Provider) kms.Provider {
	return &provider{name: name, next: p}
}

type provider struct {
	name string
	next kms.Provider
}

var _ interface {
	kms.Provider
	kms.Wrapper
	kms.Importer
	kms.Rotator
	kms.Tagger
	kms.Recorder
	kms.Finder
	kms.Notifier
} = (*provider)(nil)

func (p *provider) Unwrap() kms.Provider { return p.next }

// call makes one call of the wrapped provider, timed and counted with its outcome.
func call[T any](p *provider, operation string, f func() (T, error)) (T, error) {
	start := time.Now()
	v, err := f()
	Duration.WithLabelValues(p.name, operation).Observe(time.Since(start).Seconds())
	Requests.WithLabelValues(p.name, operation, Outcome(err)).Inc()
	return v, err
}

// do is call for the calls that return only an error.
func do(p *provider, operation string, f func() error) error {
	_, err := call(p, operation, func() (struct{}, error) { return struct{}{}, f() })
	return err
}

func (p *provider) Observe(ctx context.Context, keyID string) (kms.Key, error) {
	return call(p, "observe", func() (kms.Key, error) { return p.next.Observe(ctx, keyID) })
}

func (p *provider) Lookup(ctx context.Context, token string) (kms.Key, error) {
	return call(p, "lookup", func() (kms.Key, error) { return p.next.Lookup(ctx, token) })
}

func (p *provider) Create(ctx context.Context, req kms.CreateRequest) (kms.Key, error) {
	return call(p, "create", func() (kms.Key, error) { return p.next.Create(ctx, req) })
}

func (p *provider) Enable(ctx context.Context, keyID string) error {
	return do(p, "enable", func() error { return p.next.Enable(ctx, keyID) })
}

func (p *provider) Disable(ctx context.Context, keyID string) error {
	return do(p, "disable", func() error { return p.next.Disable(ctx, keyID) })
}

func (p *provider) ScheduleDeletion(ctx context.Context, keyID string, pendingDays int) error {
	return do(p, "schedule_deletion", func() error { return p.next.ScheduleDeletion(ctx, keyID, pendingDays) })
}

func (p *provider) CancelDeletion(ctx context.Context, keyID string) error {
	return do(p, "cancel_deletion", func() error { return p.next.CancelDeletion(ctx, keyID) })
}

func (p *provider) SetDescription(ctx context.Context, keyID, description string) error {
	return do(p, "set_description", func() error { return p.next.SetDescription(ctx, keyID, description) })
}

func (p *provider) Owner(ctx context.Context, keyID string) (kms.Owner, error) {
	return call(p, "owner", func() (kms.Owner, error) { return p.next.Owner(ctx, keyID) })
}

func (p *provider) Claim(ctx context.Context, keyID string, owner, previous kms.Owner) error {
	return do(p, "claim", func() error { return p.next.Claim(ctx, keyID, owner, previous) })
}

// The optional interfaces. kms.As sends callers here only when the wrapped provider has the
// interface; the refusals below answer a caller that asserted the type instead.

func (p *provider) ImportParameters(ctx context.Context, keyID string) (kms.ImportParameters, error) {
	imp, ok := kms.As[kms.Importer](p.next)
	if !ok {
		return kms.ImportParameters{}, lacks("take imported key material")
	}
	return call(p, "import_parameters", func() (kms.ImportParameters, error) { return imp.ImportParameters(ctx, keyID) })
}

func (p *provider) ImportMaterial(ctx context.Context, keyID, importToken string, wrappedMaterial []byte, expiresAt time.Time) error {
	imp, ok := kms.As[kms.Importer](p.next)
	if !ok {
		return lacks("take imported key material")
	}
	return do(p, "import_material", func() error { return imp.ImportMaterial(ctx, keyID, importToken, wrappedMaterial, expiresAt) })
}

func (p *provider) Rotation(ctx context.Context, keyID string) (kms.Rotation, error) {
	rot, ok := kms.As[kms.Rotator](p.next)
	if !ok {
		return kms.Rotation{}, lacks("rotate keys")
	}
	return call(p, "rotation", func() (kms.Rotation, error) { return rot.Rotation(ctx, keyID) })
}

func (p *provider) SetRotation(ctx context.Context, keyID string, enabled bool, intervalDays int) error {
	rot, ok := kms.As[kms.Rotator](p.next)
	if !ok {
		return lacks("rotate keys")
	}
	return do(p, "set_rotation", func() error { return rot.SetRotation(ctx, keyID, enabled, intervalDays) })
}

func (p *provider) Tags(ctx context.Context, keyID string) (map[string]string, error) {
	tagger, ok := kms.As[kms.Tagger](p.next)
	if !ok {
		return nil, lacks("tag keys")
	}
	return call(p, "tags", func() (map[string]string, error) { return tagger.Tags(ctx, keyID) })
}

func (p *provider) SetTags(ctx context.Context, keyID string, tags map[string]string) error {
	tagger, ok := kms.As[kms.Tagger](p.next)
	if !ok {
		return lacks("tag keys")
	}
	return do(p, "set_tags", func() error { return tagger.SetTags(ctx, keyID, tags) })
}

func (p *provider) Provenance(ctx context.Context, keyID string) (kms.Owner, kms.Provenance, error) {
	rec, ok := kms.As[kms.Recorder](p.next)
	if !ok {
		return kms.Owner{}, kms.Provenance{}, lacks("record provenances")
	}
	type both struct {
		o kms.Owner
		p kms.Provenance
	}
	b, err := call(p, "provenance", func() (both, error) {
		o, pr, err := rec.Provenance(ctx, keyID)
		return both{o, pr}, err
	})
	return b.o, b.p, err
}

func (p *provider) SetPolicy(ctx context.Context, keyID string, prov kms.Provenance) error {
	rec, ok := kms.As[kms.Recorder](p.next)
	if !ok {
		return lacks("record provenances")
	}
	return do(p, "set_policy", func() error { return rec.SetPolicy(ctx, keyID, prov) })
}

func (p *provider) MadeIn(ctx context.Context, cluster string) ([]kms.Made, error) {
	rec, ok := kms.As[kms.Recorder](p.next)
	if !ok {
		return nil, lacks("record provenances")
	}
	return call(p, "made_in", func() ([]kms.Made, error) { return rec.MadeIn(ctx, cluster) })
}

func (p *provider) Find(ctx context.Context, req kms.CreateRequest) (kms.Key, error) {
	finder, ok := kms.As[kms.Finder](p.next)
	if !ok {
		return kms.Key{}, lacks("find keys by their create attempt")
	}
	return call(p, "find", func() (kms.Key, error) { return finder.Find(ctx, req) })
}

// Changes passes on the provider's own changes; they are not calls, so they are not counted.
// A provider without any gives a channel that never delivers.
func (p *provider) Changes() <-chan string {
	if n, ok := kms.As[kms.Notifier](p.next); ok {
		return n.Changes()
	}
	return nil
}

func lacks(what string) error {
	return &kms.UnsupportedError{Reason: "the configured KMS provider cannot " + what}
}
