package embedded

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// TestAliasIsReservedAtomically creates keys with one alias from many goroutines at once:
// exactly one key gets it, whatever the interleaving.
func TestAliasIsReservedAtomically(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for round := range 5 {
		alias := fmt.Sprintf("race/%d", round)
		var wg sync.WaitGroup
		errs := make([]error, 6)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = f.p.Create(context.Background(), kms.CreateRequest{Alias: alias, KeySpec: "AES_256",
					KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: fmt.Sprintf("race-%d-%d", round, i)})
			}()
		}
		wg.Wait()
		made := 0
		for i := range errs {
			if _, err := f.p.Lookup(context.Background(), fmt.Sprintf("race-%d-%d", round, i)); err == nil {
				made++
			}
		}
		if made != 1 {
			t.Errorf("round %d: %d keys with alias %s (errors %v)", round, made, alias, errs)
		}
	}
}

// TestAliasOfAGoneKeyIsFree checks the reservation of a deleted key, and of a create that never
// wrote its key, gives way, the latter only once that create has certainly given up.
func TestAliasOfAGoneKeyIsFree(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	req := kms.CreateRequest{Alias: "reuse/me", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "first"}
	first, err := f.p.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.p.ScheduleDeletion(ctx, first.ID, 7); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(8 * 24 * time.Hour)
	if _, err := f.p.ReapDue(ctx); err != nil {
		t.Fatal(err)
	}
	req.Token = "second"
	if _, err := f.p.Create(ctx, req); err != nil {
		t.Fatalf("the alias of a deleted key: %v", err)
	}

	// A create that reserved an alias and died before writing its key.
	stalled := reservation{Alias: "stalled/create", KeyID: keyIDFor("died"), ReservedAt: f.clock.Now()}
	if err := f.p.client.Create(ctx, newReservation(f.ns, stalled)); err != nil {
		t.Fatal(err)
	}
	req = kms.CreateRequest{Alias: "stalled/create", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "waiting"}
	_, err = f.p.Create(ctx, req)
	if err == nil || kms.IsTerminal(err) {
		t.Fatalf("while the reserving create may still write its key: %v, want an error to retry", err)
	}
	f.clock.Step(staleReservation)
	if _, err := f.p.Create(ctx, req); err != nil {
		t.Fatalf("after the reservation went stale: %v", err)
	}
}

// TestOnlyKeySecretsAreKeys checks a Secret of the KMS namespace that is not a key record is
// no key, even with a key's name: an ID from a tenant never reads anything else.
func TestOnlyKeySecretsAreKeys(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := "0123abcd-0000-4000-8000-000000000001"
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secretName(id), Namespace: f.ns},
		Data: map[string][]byte{recordField: []byte(`{"id":"` + id + `","state":"Enabled"}`)}}
	if err := f.p.client.Create(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	for _, probe := range []string{id, "embedded-root-key", "alias-" + aliasHash("x")} {
		_, err := f.p.Observe(context.Background(), probe)
		var nf *kms.NotFoundError
		if !errors.As(err, &nf) {
			t.Errorf("Observe(%q): %v, want NotFound", probe, err)
		}
	}
}

// TestAliasOfAKeyFromBeforeReservations checks a key made before aliases were reserved still
// holds its alias, and that after the first refusal the reservation names it, so the next
// create is refused at once rather than told to wait.
func TestAliasOfAKeyFromBeforeReservations(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	req := kms.CreateRequest{Alias: "old/alias", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "old"}
	old, err := f.p.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.p.client.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: aliasSecretName(req.Alias), Namespace: f.ns}}); err != nil {
		t.Fatal(err)
	}
	for _, token := range []string{"new-1", "new-2"} {
		req.Token = token
		_, err := f.p.Create(ctx, req)
		if inUse := kms.AsAliasInUse(err); inUse == nil || inUse.KeyID != old.ID {
			t.Errorf("Create %s: %v, want the alias in use by %s", token, err, old.ID)
		}
	}
}
