package embedded

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Start runs the reaper until ctx ends: at each key's deletion date it destroys the key's
// material and marks it Deleted, and when imported material expires it destroys the material
// and returns the key to PendingImport, whether or not any resource still refers to the key.
// The manager runs it only on the leader.
func (p *Provider) Start(ctx context.Context) error {
	log := p.log.WithName("reaper")
	// The first pass reads every key: a wake left by a deletion scheduled before the start
	// would only make a second pass, racing a clock that moves meanwhile.
	select {
	case <-p.wake:
	default:
	}
	for {
		next, err := p.ReapDue(ctx)
		wait := p.reapInterval
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			log.Error(err, "Acting on keys past their deletion date or material expiry")
		}
		if !next.IsZero() {
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

// ReapDue deletes every key whose deletion date has come and expires every imported material
// whose time has come, and returns the earliest such time still ahead (zero when none is). A
// key it cannot update does not hold up the others: each such key is in the error returned,
// and is tried again soon. The view indexes keys by when they are due, so a pass asks the
// apiserver nothing and reads only the keys due: its cost does not grow with the keys that
// have no date, or whose date is ahead. Each key due is written on its own, judged on its
// newest state.
func (p *Provider) ReapDue(ctx context.Context) (time.Time, error) {
	now := p.clock.Now()
	dated, next, err := p.view.dueBy(now)
	if err != nil {
		return time.Time{}, fmt.Errorf("finding keys past their deletion date or material expiry: %w", err)
	}
	var failed []error
	for _, s := range dated {
		r, err := readRecord(s)
		if err != nil {
			failed = append(failed, fmt.Errorf("key Secret %s: %w", s.Name, err))
			continue
		}
		due, ok := r.nextDue()
		if !ok {
			continue
		}
		if due.After(now) {
			if next.IsZero() || due.Before(next) {
				next = due
			}
			continue
		}
		if err := p.transitionSecret(ctx, r.ID, "reap", p.reap); err != nil {
			if ctx.Err() != nil {
				return next, ctx.Err()
			}
			if kms.IsNotFound(err) {
				continue // deleted since (a write of this process's the store never held)
			}
			p.log.Error(err, "Key is due but could not be updated; trying the others", "keyID", r.ID)
			failed = append(failed, err)
			// Looked at again soon, not only at the next interval.
			if retry := now.Add(reapRetry); next.IsZero() || retry.Before(next) {
				next = retry
			}
			continue
		}
		p.log.Info("Key reached its deletion date or material expiry", "keyID", r.ID)
		select {
		case p.changes <- r.ID:
		default:
			// Nobody is draining the channel; the operator's resync reports the change later.
		}
	}
	return next, errors.Join(failed...)
}

// reapRetry is how soon a due key the reaper could not update is tried again.
const reapRetry = 10 * time.Second

// reap applies what is due to a key, on a fresh read, so a deletion canceled meanwhile stands:
// at the deletion date the key is Deleted and its material destroyed; at the material's expiry
// the material is destroyed and an Enabled or Disabled key returns to PendingImport; at its
// rotation time the key gets new material, and keeps the old for what it encrypted.
func (p *Provider) reap(r *record, s *corev1.Secret) (bool, error) {
	now := p.clock.Now().UTC()
	due, ok := r.nextDue()
	if !ok || due.After(now) {
		return false, nil
	}
	switch {
	case r.State == kms.StatePendingDeletion:
		r.State, r.HasMaterial, r.Import, r.DeletedAt = kms.StateDeleted, false, nil, &now
	case r.HasMaterial && r.MaterialExpiresAt != nil && !r.MaterialExpiresAt.After(now):
		r.HasMaterial, r.MaterialExpiresAt = false, nil
		if r.State == kms.StateEnabled || r.State == kms.StateDisabled {
			r.State = kms.StatePendingImport
		}
	default:
		if err := p.rotate(r, s, now.Truncate(time.Second)); err != nil {
			return false, err
		}
	}
	return true, nil
}
