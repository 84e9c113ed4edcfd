package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// floor is the least any operator must write for a step, done by a client that knows the
// answer in advance. The user's writes are made as in the operator's run, *writers at a time;
// as each returns, one of as many workers as the operator has makes, for that key, the writes
// no operator can avoid: one write of the key's Secret and one status write, as the embedded
// KMS and the reconciler must (a create also makes the Secret and adds a finalizer); and, with
// events, the one event this project's operator records for each change (docs/api.md, "Events"),
// sent one at a time from one queue as client-go's event broadcaster does. It reads nothing, and
// needs no watch to learn of the user's write. Its time is what the apiserver, on this machine,
// allows at best.
type floor struct {
	// user makes the user's writes, c the floor's own.
	user      client.WithWatch
	c         client.WithWatch
	namespace string
	kmsNS     string
	writers   int
	workers   int
	events    bool
	// The floor's resources and Secrets as last written, by name.
	cmks    map[string]*v1alpha1.CustomerMasterKey
	secrets map[string]*corev1.Secret
}

func newFloor(user, c client.WithWatch, namespace, kmsNS string, writers, workers int, events bool) *floor {
	return &floor{user: user, c: c, namespace: namespace, kmsNS: kmsNS, writers: writers, workers: workers, events: events,
		cmks: map[string]*v1alpha1.CustomerMasterKey{}, secrets: map[string]*corev1.Secret{}}
}

// run times one step over names: from the first write to the last key reporting its phase,
// as the watcher sees it, exactly as for the operator.
func (f *floor) run(ctx context.Context, s step, names []string) (time.Duration, error) {
	w, err := watchPhases(ctx, f.user, f.namespace)
	if err != nil {
		return 0, err
	}
	defer w.stop()
	cmks := make([]*v1alpha1.CustomerMasterKey, len(names))
	secrets := make([]*corev1.Secret, len(names))
	for i, name := range names {
		cmks[i], secrets[i] = f.cmks[name], f.secrets[name]
	}
	written := make(chan int, len(names))
	var reacted, recorded error
	var wg sync.WaitGroup
	events := make(chan *eventsv1.Event, len(names))
	wg.Go(func() {
		for ev := range events {
			if err := f.c.Create(ctx, ev); err != nil && recorded == nil {
				recorded = err
			}
		}
	})
	wg.Go(func() {
		reacted = parallel(ctx, f.workers, len(names), func(int) error {
			i, ok := <-written
			if !ok {
				return errors.New("the user's writes stopped")
			}
			var err error
			if cmks[i], secrets[i], err = f.react(ctx, s, cmks[i], secrets[i]); err != nil {
				return err
			}
			if f.events {
				events <- event(cmks[i], s)
			}
			w.expect(names[i], s.want, cmks[i].Generation)
			return nil
		})
		close(events)
	})
	start := time.Now()
	err = parallel(ctx, f.writers, len(names), func(i int) error {
		var err error
		if cmks[i], err = f.write(ctx, s, names[i], cmks[i]); err != nil {
			return err
		}
		written <- i
		return nil
	})
	close(written)
	if err != nil {
		wg.Wait()
		return 0, err
	}
	end, err := w.wait(ctx, len(names))
	// The events still queued are sent before the next step, untimed, as the operator's are
	// (see settle).
	wg.Wait()
	if err := errors.Join(err, reacted, recorded); err != nil {
		return 0, err
	}
	for i, name := range names {
		f.cmks[name], f.secrets[name] = cmks[i], secrets[i]
	}
	return end.Sub(start), nil
}

// write is the user's write of one key.
func (f *floor) write(ctx context.Context, s step, name string, cmk *v1alpha1.CustomerMasterKey) (*v1alpha1.CustomerMasterKey, error) {
	if s.name == stepCreate {
		cmk = newKey(f.namespace, name)
		return cmk, f.user.Create(ctx, cmk)
	}
	return cmk, f.user.Patch(ctx, cmk, client.RawPatch(types.MergePatchType, s.patch))
}

// react makes the writes no operator can avoid for one key the user wrote.
func (f *floor) react(ctx context.Context, s step, cmk *v1alpha1.CustomerMasterKey, secret *corev1.Secret) (*v1alpha1.CustomerMasterKey, *corev1.Secret, error) {
	if s.name == stepCreate {
		// The finalizer and the create attempt, in one patch carrying the resourceVersion.
		patch := client.MergeFromWithOptions(cmk.DeepCopy(), client.MergeFromWithOptimisticLock{})
		cmk.Finalizers = []string{floorFinalizer}
		cmk.Annotations = map[string]string{"kms.cmk.io/create-attempted-at": time.Now().UTC().Format(time.RFC3339Nano)}
		if err := f.c.Patch(ctx, cmk, patch); err != nil {
			return nil, nil, err
		}
		secret = keySecret(f.kmsNS, cmk.Name)
		if err := f.c.Create(ctx, secret); err != nil {
			return nil, nil, err
		}
	} else {
		secret.Labels["kms.cmk.io/state"] = string(s.want)
		secret.Data["key.json"] = record(cmk.Name, s.want)
		if err := f.c.Update(ctx, secret); err != nil {
			return nil, nil, err
		}
	}
	// The status write, with the lock, as the reconciler makes it.
	before := cmk.DeepCopy()
	cmk.Status.KeyID = string(cmk.UID)
	cmk.Status.Phase = s.want
	cmk.Status.ObservedGeneration = cmk.Generation
	cmk.Status.PendingDays = 0
	cmk.Status.DeletionDate = nil
	if s.want == v1alpha1.PhasePendingDeletion {
		cmk.Status.PendingDays = 7
		cmk.Status.DeletionDate = &metav1.Time{Time: time.Now().Add(7 * 24 * time.Hour).Truncate(time.Second)}
	}
	for _, c := range []metav1.Condition{
		{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Ready", Message: "The key is " + string(s.want) + " as the spec asks"},
		{Type: v1alpha1.ConditionSynced, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonReconcileSuccess, Message: "The last reconcile reached the KMS without error"},
	} {
		c.ObservedGeneration = cmk.Generation
		c.LastTransitionTime = metav1.Now()
		meta.SetStatusCondition(&cmk.Status.Conditions, c)
	}
	if err := f.c.Status().Patch(ctx, cmk, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return nil, nil, err
	}
	return cmk, secret, nil
}

const floorFinalizer = "bench.cmk.io/floor"

// event is the event the operator records for a key's change, shaped as client-go's event
// recorder makes it.
func event(cmk *v1alpha1.CustomerMasterKey, s step) *eventsv1.Event {
	now := time.Now()
	return &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%v.%x", cmk.Name, now.UnixNano()), Namespace: cmk.Namespace},
		EventTime:  metav1.NewMicroTime(now), ReportingController: "cmk-operator", ReportingInstance: "cmk-operator-bench",
		Action: "Floor", Reason: "Floor" + s.name, Type: corev1.EventTypeNormal,
		Regarding: corev1.ObjectReference{Kind: "FloorKey", APIVersion: floorGroupVersion.String(), Namespace: cmk.Namespace,
			Name: cmk.Name, UID: cmk.UID, ResourceVersion: cmk.ResourceVersion},
		Note: fmt.Sprintf("Key %s of %s is now %s", cmk.Status.KeyID, cmk.Name, s.want),
	}
}

// keySecret is a Secret shaped like the embedded KMS's: a record and sealed material of the
// same sizes, and the same labels.
func keySecret(namespace, name string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "cmk-" + name, Namespace: namespace, Labels: map[string]string{
			"app.kubernetes.io/managed-by": "cmk-operator-embedded-kms", "kms.cmk.io/embedded-key": "true",
			"kms.cmk.io/state": string(v1alpha1.PhaseEnabled), "kms.cmk.io/alias-hash": strings.Repeat("a", 40),
			"kms.cmk.io/owner-uid": strings.Repeat("b", 36), "kms.cmk.io/root-key-check": strings.Repeat("c", 16),
		}},
		Type: "kms.cmk.io/embedded-key",
		Data: map[string][]byte{"key.json": record(name, v1alpha1.PhaseEnabled), "material": make([]byte, 60)},
	}
}

func record(name string, phase v1alpha1.Phase) []byte {
	raw, _ := json.Marshal(map[string]any{
		"id": name, "alias": "k8s/bench/" + name, "keySpec": "AES_256", "keyUsage": "ENCRYPT_DECRYPT", "origin": "kms",
		"state": phase, "createdAt": time.Now().UTC(), "hasMaterial": true, "token": strings.Repeat("t", 36),
		"owner":        map[string]string{"namespace": "bench", "name": name, "uid": strings.Repeat("u", 36)},
		"rootKeyCheck": strings.Repeat("c", 16),
	})
	return raw
}

func newKey(namespace, name string) *v1alpha1.CustomerMasterKey {
	return testenv.Key(namespace, name, testenv.Labels(map[string]string{"bench": "yes"}))
}

func keyNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("k%05d", i)
	}
	return names
}
