package embedded

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// An alias is unique among keys that are not deleted. Listing the keys with the alias and
// then creating one is not enough: two creates would both find it free. So each alias has a
// reservation, a Secret named after the alias that only one create can make (the apiserver
// refuses a second Create of one name) or take over (an update carrying the resourceVersion
// read). The reservation names the key that holds the alias.
const aliasSecretType corev1.SecretType = "kms.cmk.io/embedded-alias"

const (
	aliasPrefix = "cmk-alias-"
	aliasField  = "alias.json"
	labelAlias  = "kms.cmk.io/embedded-alias"
)

// createDeadline bounds one Create, so a create that reserved an alias either writes its key
// within it (plus the apiserver's one-minute request timeout) or never does.
const createDeadline = 30 * time.Second

// staleReservation is how old a reservation of a key that was never written must be before
// another key may take the alias: far past createDeadline and the apiserver's request timeout,
// so the create that made it has certainly given up.
const staleReservation = 10 * time.Minute

type reservation struct {
	Alias      string    `json:"alias"`
	KeyID      string    `json:"keyID"`
	ReservedAt time.Time `json:"reservedAt"`
}

// reserveAlias makes key id the holder of alias. It fails with an *kms.AliasInUseError when a
// key that is not deleted holds the alias, and with a plain error, retried by the caller, while
// another create that reserved it moments ago may still write its key.
func (p *Provider) reserveAlias(ctx context.Context, alias, id string) error {
	want := reservation{Alias: alias, KeyID: id, ReservedAt: p.clock.Now().UTC()}
	for {
		// Most aliases are new: the reservation is made first and read only if it exists.
		err := p.client.Create(ctx, newReservation(p.namespace, want))
		if !apierrors.IsAlreadyExists(err) {
			return wrapReserve(alias, err)
		}
		s := &corev1.Secret{}
		err = p.client.Get(ctx, client.ObjectKey{Namespace: p.namespace, Name: aliasSecretName(alias)}, s)
		if apierrors.IsNotFound(err) {
			continue // released between the two calls: make it again
		}
		if err != nil {
			return wrapReserve(alias, err)
		}
		var held reservation
		if err := json.Unmarshal(s.Data[aliasField], &held); err != nil || held.Alias != alias {
			// Damaged, or not a reservation of this alias: a fresh one takes its place.
			held = reservation{}
		}
		if held.KeyID == id {
			return nil
		}
		if err := p.holds(ctx, held); err != nil {
			return err
		}
		s.Data = map[string][]byte{aliasField: mustJSON(want)}
		err = p.client.Update(ctx, s)
		if apierrors.IsConflict(err) {
			continue // another create took it over first
		}
		return wrapReserve(alias, err)
	}
}

// holds fails when the reservation's key still holds its alias: the key exists and is not
// deleted, or may yet be written by the create that reserved it.
func (p *Provider) holds(ctx context.Context, held reservation) error {
	if held.KeyID == "" {
		return nil
	}
	_, r, err := p.get(ctx, held.KeyID)
	switch {
	case kms.IsNotFound(err):
		if p.clock.Since(held.ReservedAt) < staleReservation {
			return fmt.Errorf("alias %q was reserved %s ago by a key still being created; trying again",
				held.Alias, p.clock.Since(held.ReservedAt).Truncate(time.Second))
		}
		return nil
	case err != nil:
		return err
	case r.State == kms.StateDeleted || r.Alias != held.Alias:
		return nil
	}
	return &kms.AliasInUseError{Alias: held.Alias, KeyID: held.KeyID}
}

// handOver makes the reservation of alias name key to instead of from, if it still names from.
// Best effort: a reservation left naming from only holds the alias until it is stale.
func (p *Provider) handOver(ctx context.Context, alias, from, to string) {
	s := &corev1.Secret{}
	if err := p.client.Get(ctx, client.ObjectKey{Namespace: p.namespace, Name: aliasSecretName(alias)}, s); err != nil {
		return
	}
	var held reservation
	if err := json.Unmarshal(s.Data[aliasField], &held); err != nil || held.KeyID != from {
		return
	}
	s.Data = map[string][]byte{aliasField: mustJSON(reservation{Alias: alias, KeyID: to, ReservedAt: p.clock.Now().UTC()})}
	_ = p.client.Update(ctx, s)
}

func newReservation(namespace string, r reservation) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: aliasSecretName(r.Alias), Namespace: namespace,
			Labels: map[string]string{labelManagedBy: managedByValue, labelAlias: "true"}},
		Type: aliasSecretType,
		Data: map[string][]byte{aliasField: mustJSON(r)},
	}
}

func aliasSecretName(alias string) string { return aliasPrefix + aliasHash(alias) }

func wrapReserve(alias string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("reserving alias %q: %w", alias, err)
}

func mustJSON(v any) []byte {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(err) // Only plain structs of strings and times come here.
	}
	return raw
}
