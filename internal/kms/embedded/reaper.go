package embedded

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Start runs the reaper until ctx ends: at each key's deletion date it destroys the key's
// material and marks it Deleted, whether or not any resource still refers to the key. The
// manager runs it only on the leader.
func (p *Provider) Start(ctx context.Context) error {
	log := p.log.WithName("reaper")
	for {
		next, err := p.DeleteDue(ctx)
		wait := p.reapInterval
		if err != nil {
			log.Error(err, "Deleting keys past their deletion date")
		} else if !next.IsZero() {
			wait = min(wait, next.Sub(p.clock.Now()))
		}
		timer := p.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C():
		case <-p.wake:
			timer.Stop()
		}
	}
}

// DeleteDue deletes every key whose deletion date has come, and returns the earliest deletion
// date still ahead (zero when none is).
func (p *Provider) DeleteDue(ctx context.Context) (time.Time, error) {
	var list corev1.SecretList
	if err := p.client.List(ctx, &list, client.InNamespace(p.namespace),
		client.MatchingLabels{labelKey: "true", labelState: string(kms.StatePendingDeletion)}); err != nil {
		return time.Time{}, fmt.Errorf("listing keys pending deletion: %w", err)
	}
	now := p.clock.Now()
	var next time.Time
	for i := range list.Items {
		r, err := readRecord(&list.Items[i])
		if err != nil || r.State != kms.StatePendingDeletion || r.DeletionDate == nil {
			continue
		}
		if r.DeletionDate.After(now) {
			if next.IsZero() || r.DeletionDate.Before(next) {
				next = *r.DeletionDate
			}
			continue
		}
		if err := p.destroy(ctx, r.ID); err != nil {
			return next, err
		}
		p.log.Info("Deleted key at its deletion date", "keyID", r.ID)
		select {
		case p.changes <- r.ID:
		default:
			// Nobody is draining the channel; the operator's resync reports the change later.
		}
	}
	return next, nil
}

// destroy removes the key's material and marks it Deleted, in one write, if its deletion date
// has come. The check runs again on the fresh read, so a deletion canceled meanwhile stands.
func (p *Provider) destroy(ctx context.Context, keyID string) error {
	return p.transition(ctx, keyID, "delete", func(r *record) (bool, error) {
		now := p.clock.Now().UTC()
		if r.State != kms.StatePendingDeletion || r.DeletionDate == nil || r.DeletionDate.After(now) {
			return false, nil
		}
		r.State, r.HasMaterial, r.DeletedAt = kms.StateDeleted, false, &now
		return true, nil
	})
}
