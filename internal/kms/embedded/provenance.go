package embedded

import (
	"context"
	"fmt"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

var _ kms.Recorder = (*Provider)(nil)

// Provenance reports the key's owner and provenance from its record, as the view has it: the
// view has this process's own writes (the leader's claims) at once, and another's as soon as
// the watch delivers them, as for Owner.
func (p *Provider) Provenance(ctx context.Context, keyID string) (kms.Owner, kms.Provenance, error) {
	_, r, err := p.get(ctx, keyID)
	if err != nil {
		return kms.Owner{}, kms.Provenance{}, err
	}
	var prov kms.Provenance
	if r.Provenance != nil {
		prov = *r.Provenance
	}
	return r.owner(), prov, nil
}

// SetPolicy changes the deletion policy the key's provenance records. The record is written
// whole, so it never loses its install.
func (p *Provider) SetPolicy(ctx context.Context, keyID string, want kms.Provenance) error {
	return p.transition(ctx, keyID, "record the deletion policy of", func(r *record) (bool, error) {
		if r.Provenance == nil || r.Provenance.DeletionPolicy == want.DeletionPolicy && r.Provenance.PendingDays == want.PendingDays {
			return false, nil
		}
		if r.State == kms.StateDeleted {
			return false, &kms.StateError{KeyID: keyID, Call: "record the deletion policy of", State: r.State}
		}
		r.Provenance.DeletionPolicy, r.Provenance.PendingDays = want.DeletionPolicy, want.PendingDays
		return true, nil
	})
}

// MadeIn lists the keys of this cluster's provenance from the view, by the cluster label.
func (p *Provider) MadeIn(_ context.Context, cluster string) ([]kms.Made, error) {
	secrets, err := p.view.byIndex(byCluster, cluster)
	if err != nil {
		return nil, fmt.Errorf("listing the keys made from cluster %s: %w", cluster, err)
	}
	made := make([]kms.Made, 0, len(secrets))
	for _, s := range secrets {
		r, err := readRecord(s)
		if err != nil || !isKeySecret(s) || r.Provenance == nil || r.Provenance.Cluster != cluster || r.State == kms.StateDeleted {
			continue // not a key of this cluster's; a damaged record is reported where it is used
		}
		made = append(made, kms.Made{Key: r.key(), Token: r.Token, Owner: r.owner(), Provenance: *r.Provenance})
	}
	return made, nil
}
