package kms

import (
	"context"
	"strings"
)

// Provenance is what the KMS records of a key the operator made, next to its owner, so that a
// key whose resource vanished without its finalizer having run (a crash while the key was
// made, a finalizer removed by hand) is still dealt with as its resource asked: the orphan
// sweep (controllers/orphans.go) reads it. A key without one was not made by this operator,
// or by a version that did not record it, and the sweep never touches it.
type Provenance struct {
	// Cluster is the UID of the kube-system namespace of the cluster whose resource made the
	// key: several clusters may share one KMS account, and each sweeps only its own keys.
	Cluster string
	// Install is InstallID of the CustomerMasterKey CRD the owner was a resource of. Deleting
	// the CRD deletes every resource and retains every key (docs/guardrails.md); a CRD created
	// again has another UID, so the keys of the one before are not taken for orphans of a crash.
	Install string
	// DeletionPolicy and PendingDays are the owner's, kept in step with its spec: what the
	// sweep does with the key once the owner is gone.
	DeletionPolicy string
	PendingDays    int
}

// The deletion policies, as in the API.
const (
	PolicyDelete = "Delete"
	PolicyRetain = "Retain"
)

// The deletion windows a KMS takes, in days (pending_days: Huawei's schedule-key-deletion
// reference; the embedded KMS the same), as spec.pendingDays is bounded.
const (
	MinPendingDays = 7
	MaxPendingDays = 1096
)

// IsZero reports whether no provenance is recorded.
func (p Provenance) IsZero() bool { return p.Cluster == "" }

// InstallID is how a provenance names an install: the first 16 hex digits of the CRD's UID.
// A Huawei tag value holds 43 characters, too few for a cluster and a CRD UID besides the
// policy; 64 bits tell one install of a cluster from the next.
func InstallID(crdUID string) string {
	id := strings.ReplaceAll(crdUID, "-", "")
	return id[:min(16, len(id))]
}

// Made is a key as the orphan sweep sees it: its state, its owner, the creation token it was
// made with, and its provenance.
type Made struct {
	Key        Key
	Token      string
	Owner      Owner
	Provenance Provenance
}

// Recorder is implemented by providers that keep a Provenance with the keys they create (from
// CreateRequest.Provenance) and can list keys by it.
type Recorder interface {
	// Provenance reports the key's owner and provenance, read together and afresh (a cloud KMS
	// keeps both in the key's tags: one call); a zero Provenance when none is recorded.
	Provenance(ctx context.Context, keyID string) (Owner, Provenance, error)
	// SetPolicy records p's DeletionPolicy and PendingDays in the key's provenance; where the
	// record lost its install (a Huawei retag that died halfway, between its two calls), p's
	// is written with them. A key without a provenance is left without one.
	SetPolicy(ctx context.Context, keyID string, p Provenance) error
	// MadeIn lists the keys whose provenance names this cluster, deleted ones aside. It may
	// miss a key recorded a moment ago (a cloud's tag search lags), and fails rather than
	// answer with a part of the list; what it reports may be behind, so a caller reads a key
	// again with Provenance before acting on it.
	MadeIn(ctx context.Context, cluster string) ([]Made, error)
}

// Finder is implemented by providers whose Create is two calls (make the key, then mark it with
// its token and owner), so that a create that died between them leaves a key Lookup cannot
// find. The reconciler asks it for the key of a resource being deleted that never recorded
// one: without it, that key would outlive its resource unmarked, out of every sweep's sight.
type Finder interface {
	// Find reports the key Create with req made: by its token, else the key holding req.Alias
	// that carries no mark of anyone's and was made within req's recorded attempt, which it
	// marks now as Create would have. A *NotFoundError when there is none.
	Find(ctx context.Context, req CreateRequest) (Key, error)
}
