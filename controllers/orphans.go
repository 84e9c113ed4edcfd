package controllers

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// DefaultOrphanSweepInterval is how often the orphan sweep runs after the one at start.
const DefaultOrphanSweepInterval = time.Hour

// The sweep's metrics (docs/guardrails.md).
var (
	orphansRetained = prometheus.NewGauge(prometheus.GaugeOpts{Name: "cmk_orphaned_keys_retained",
		Help: "Keys of this cluster whose CustomerMasterKey is gone and which the last orphan sweep left in the KMS: their recorded deletionPolicy is Retain, or the CRD they were made under was deleted."})
	orphansScheduled = prometheus.NewCounter(prometheus.CounterOpts{Name: "cmk_orphaned_keys_scheduled_total",
		Help: "Keys whose CustomerMasterKey is gone that the orphan sweep scheduled for deletion, as their recorded deletionPolicy Delete asks."})
	orphanSweeps = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cmk_orphan_sweeps_total",
		Help: "Orphan sweeps, by result: completed, skipped (the CRD is being deleted) or failed (a list could not be completed; nothing was done)."}, []string{"result"})
)

func init() { metrics.Registry.MustRegister(orphansRetained, orphansScheduled, orphanSweeps) }

// verdict is what the sweep does with one key of this cluster.
type verdict int

const (
	// notOrphan: the key's resource lives, or the key is not one the sweep may judge.
	notOrphan verdict = iota
	// scheduleOrphan: its resource is gone, and its recorded policy is Delete.
	scheduleOrphan
	// retainOrphan: its resource is gone, and its recorded policy is Retain.
	retainOrphan
	// uninstalledOrphan: its resource went with the CRD it was made under: an uninstall keeps
	// every key, and so does the sweep.
	uninstalledOrphan
	// scheduledOrphan: its resource is gone, and its deletion is already scheduled.
	scheduledOrphan
)

// live is what the sweep knows of the resources: the UIDs that exist, the namespaces and names
// (kms.Named) of those without a key yet, and the key IDs they name, from a complete list of
// the namespaces it can see (nil: all).
type live struct {
	uids, names, keyIDs map[string]bool
	namespaces          []string
}

// judge decides what becomes of one key, from its record in the KMS and the resources that
// exist. It is pure: the sweep reads a key again before it acts on a verdict. A key is judged
// only when it is still its maker's (owner and creation token agree: a key claimed since, by
// adoption or a resource created again, is that resource's, made elsewhere or not), when that
// resource is in a namespace the list covered, and when no resource names the key. A resource
// of the owner's namespace and name that lives (created again: a restore, a GitOps sync) is
// about to take the key back, so the key is not an orphan either.
func judge(m kms.Made, cluster, install string, l live) verdict {
	p := m.Provenance
	switch {
	case p.Cluster != cluster || m.Token == "" || m.Owner.UID != m.Token:
		return notOrphan
	case l.namespaces != nil && !slices.ContainsFunc(l.namespaces, m.Owner.In):
		return notOrphan
	case l.uids[m.Owner.UID] || l.keyIDs[m.Key.ID] || l.names[kms.Named(m.Owner.Namespace, m.Owner.Name)]:
		return notOrphan
	case p.Install != install:
		return uninstalledOrphan
	case m.Key.State == kms.StatePendingDeletion || m.Key.State == kms.StateDeleted:
		return scheduledOrphan
	case p.DeletionPolicy == kms.PolicyDelete && p.PendingDays >= kms.MinPendingDays && p.PendingDays <= kms.MaxPendingDays:
		return scheduleOrphan
	}
	return retainOrphan // Retain, or a record edited by hand into something else: nothing is deleted
}

// orphanSweep applies the recorded deletion policy to the keys of this cluster whose
// resource is gone, at start and then at every interval, on the leader only.
type orphanSweep struct {
	r          *CustomerMasterKeyReconciler
	rec        kms.Recorder
	interval   time.Duration
	namespaces []string
	log        logr.Logger
	// told holds the IDs of the keys left whose log line was written (see report).
	told sync.Map
}

// NeedLeaderElection keeps the sweep to the leader, like the reconciler's KMS calls.
func (s *orphanSweep) NeedLeaderElection() bool { return true }

// Start sweeps until ctx ends. A failed sweep is tried again at the next interval: nothing was
// done, and nothing is lost by waiting.
func (s *orphanSweep) Start(ctx context.Context) error {
	for {
		if _, err := s.sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Error(err, "Orphan sweep failed; nothing was done, and it runs again later", "in", s.interval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.interval):
		}
	}
}

// sweepResult counts what one sweep found: keys scheduled, keys left, and keys it could not
// settle this time; skipped when the CRD was being deleted.
type sweepResult struct {
	scheduled, retained, failed int
	skipped                     bool
}

// sweep runs one sweep and counts it.
func (s *orphanSweep) sweep(ctx context.Context) (sweepResult, error) {
	res, err := s.run(ctx)
	switch {
	case err != nil:
		orphanSweeps.WithLabelValues("failed").Inc()
	case res.skipped:
		orphanSweeps.WithLabelValues("skipped").Inc()
		s.log.Info("Orphan sweep skipped: the CustomerMasterKey CRD is being deleted, and an uninstall keeps every key")
	default:
		orphansRetained.Set(float64(res.retained))
		orphanSweeps.WithLabelValues("completed").Inc()
	}
	return res, err
}

// run lists the KMS's keys of this cluster first, then the resources: a key listed was made
// for a resource that existed before it, so one missing from the later list is gone for good.
// It acts on nothing while the CRD is being deleted, or when any list is incomplete.
func (s *orphanSweep) run(ctx context.Context) (sweepResult, error) {
	var res sweepResult
	cluster, err := s.r.clusterID(ctx)
	if err != nil {
		return res, err
	}
	install, err := s.install(ctx)
	if err != nil || install == "" {
		res.skipped = err == nil
		return res, err
	}
	made, err := s.rec.MadeIn(ctx, cluster)
	if err != nil {
		return res, fmt.Errorf("listing the keys of cluster %s: %w", cluster, err)
	}
	l, err := s.live(ctx)
	if err != nil {
		return res, err
	}
	for _, m := range made {
		v, err := s.settle(ctx, m, cluster, install, l)
		switch {
		case err != nil:
			// One key the KMS will not act on now (frozen, say) does not keep the sweep from
			// the others; it is judged again at the next sweep.
			res.failed++
			s.log.Error(err, "Orphaned key left for the next sweep", "keyID", m.Key.ID)
		case v == scheduleOrphan:
			res.scheduled++
		case v == retainOrphan || v == uninstalledOrphan:
			res.retained++
		}
	}
	s.log.Info("Orphan sweep done", "keys", len(made), "scheduled", res.scheduled, "retained", res.retained, "failed", res.failed)
	return res, nil
}

// install is the current install's ID; empty while the CRD is being deleted, or gone.
func (s *orphanSweep) install(ctx context.Context) (string, error) {
	crd, err := s.r.crd(ctx)
	if err != nil {
		return "", fmt.Errorf("reading CRD %s: %w", CRDName, err)
	}
	if crd == nil || !crd.DeletionTimestamp.IsZero() {
		return "", nil
	}
	return kms.InstallID(string(crd.UID)), nil
}

// settle judges one key and carries the verdict out. A key to schedule is read again first,
// and judged on what it says now, and the CRD is read again: between the list and the call, a
// claim may have taken the key, or an uninstall begun.
func (s *orphanSweep) settle(ctx context.Context, m kms.Made, cluster, install string, l live) (verdict, error) {
	v := judge(m, cluster, install, l)
	if v != scheduleOrphan {
		s.report(m, v)
		return v, nil
	}
	owner, prov, err := s.rec.Provenance(ctx, m.Key.ID)
	if kms.IsNotFound(err) {
		return notOrphan, nil
	}
	if err != nil {
		return v, fmt.Errorf("reading key %s again: %w", m.Key.ID, err)
	}
	key, err := s.r.observe(ctx, m.Key.ID)
	if err != nil || key == nil {
		return notOrphan, err
	}
	m.Key, m.Owner, m.Provenance = *key, owner, prov
	if now, err := s.install(ctx); err != nil || now != install {
		return notOrphan, err
	}
	if v = judge(m, cluster, install, l); v != scheduleOrphan {
		s.report(m, v)
		return v, nil
	}
	if err := s.r.KMS.ScheduleDeletion(ctx, m.Key.ID, m.Provenance.PendingDays); err != nil {
		return v, fmt.Errorf("scheduling the deletion of orphaned key %s: %w", m.Key.ID, err)
	}
	orphansScheduled.Inc()
	s.report(m, v)
	return v, nil
}

// report logs what the sweep did or left, and records an event about the vanished resource,
// in its namespace, for a key it scheduled.
func (s *orphanSweep) report(m kms.Made, v verdict) {
	o, p := m.Owner, m.Provenance
	log := s.log.WithValues("keyID", m.Key.ID, "state", m.Key.State, "owner", o.Namespace+"/"+o.Name, "ownerUID", o.UID,
		"deletionPolicy", p.DeletionPolicy, "pendingDays", p.PendingDays)
	switch v {
	case scheduleOrphan:
		log.Info("Scheduled the deletion of a key whose CustomerMasterKey is gone, as its recorded deletionPolicy Delete asks")
		if s.r.Recorder != nil {
			s.r.Recorder.Eventf(vanished(o), nil, corev1.EventTypeWarning, v1alpha1.EventOrphanDeletionScheduled, "SweepOrphan",
				"Key %s was left behind by CustomerMasterKey %s/%s (UID %s), which is gone: its deletion is scheduled in %d days, "+
					"as the recorded deletionPolicy Delete asks; to keep it, cancel the deletion in the KMS and adopt it with spec.keyID",
				m.Key.ID, o.Namespace, o.Name, o.UID, p.PendingDays)
		}
	case retainOrphan, uninstalledOrphan:
		// Once per process: the gauge counts them at every sweep, the log need not repeat it.
		if _, told := s.told.LoadOrStore(m.Key.ID, true); told {
			return
		}
		if v == retainOrphan {
			log.Info("Left a key whose CustomerMasterKey is gone in the KMS, as its recorded deletionPolicy asks; adopt it with spec.keyID, or delete it in the KMS")
		} else {
			log.Info("Left a key whose CustomerMasterKey went with an earlier install of the CRD in the KMS: an uninstall keeps every key")
		}
	}
}

// vanished refers to a resource that no longer exists, so an event about it lands in its
// namespace, where `kubectl get events` shows it.
func vanished(o kms.Owner) *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: v1alpha1.GroupVersion.String(), Kind: "CustomerMasterKey",
		Namespace: o.Namespace, Name: o.Name, UID: types.UID(o.UID)}
}

// sweepPage is how many resources one list call returns.
const sweepPage = 500

// live lists every resource the sweep can see, from the apiserver (a consistent read, page by
// page), never the cache, which may not have a resource made a moment ago.
func (s *orphanSweep) live(ctx context.Context) (live, error) {
	l := live{uids: map[string]bool{}, names: map[string]bool{}, keyIDs: map[string]bool{}, namespaces: s.namespaces}
	scopes := []client.ListOption{}
	for _, ns := range s.namespaces {
		scopes = append(scopes, client.InNamespace(ns))
	}
	if len(scopes) == 0 {
		scopes = append(scopes, client.InNamespace(""))
	}
	for _, scope := range scopes {
		cont := ""
		for {
			var list v1alpha1.CustomerMasterKeyList
			if err := s.r.apiReader().List(ctx, &list, scope, client.Limit(sweepPage), client.Continue(cont)); err != nil {
				return live{}, fmt.Errorf("listing CustomerMasterKeys: %w", err)
			}
			for i := range list.Items {
				c := &list.Items[i]
				l.uids[string(c.UID)] = true
				if c.Status.KeyID == "" {
					// It may yet take back the key of its namespace and name; one with a key
					// of its own never will.
					l.names[kms.Named(c.Namespace, c.Name)] = true
				}
				for _, id := range []string{c.Spec.KeyID, c.Status.KeyID} {
					if id != "" {
						l.keyIDs[id] = true
					}
				}
			}
			if cont = list.Continue; cont == "" {
				break
			}
		}
	}
	return l, nil
}
