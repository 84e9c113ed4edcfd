// Package embedded is a software KMS that keeps its keys in Kubernetes Secrets, so the operator
// runs with no cloud account. Material is real (crypto/rand, crypto/rsa, crypto/ecdsa) and is
// stored only sealed under a root key; the root key itself sits in a Secret, so this is not an
// HSM: whoever reads Secrets in the KMS namespace can read the keys.
package embedded

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// The embedded KMS reads and writes Secrets only in its own namespace; config/default deploys
// the operator, and so the KMS, to cmk-system. It watches its key Secrets there, by label (see
// view.go), and no Secret anywhere else.
// +kubebuilder:rbac:groups="",namespace=cmk-system,resources=secrets,verbs=get;list;watch;create;update

// Name selects this provider with --kms-provider.
const Name = "embedded"

var rootKeyFile string

func init() {
	kms.Register(kms.Registration{
		Name: Name,
		AddFlags: func(fs *flag.FlagSet) {
			fs.StringVar(&rootKeyFile, "embedded-root-key-file", "",
				"File holding the embedded KMS root key (32 bytes, raw or base64). "+
					"Without it the root key is kept in a Secret in the KMS namespace, made on first start.")
		},
		New: func(ctx context.Context, env kms.Env) (kms.Provider, error) {
			return New(ctx, env, Options{RootKeyFile: rootKeyFile})
		},
	})
}

// Options tune the embedded provider.
type Options struct {
	// RootKeyFile, when set, holds the root key; otherwise it is kept in a Secret.
	RootKeyFile string
	// ReapInterval bounds how long the reaper sleeps between looks at keys pending deletion,
	// to catch keys whose deletion another process scheduled. Default one minute.
	ReapInterval time.Duration
}

// Provider is the embedded KMS. It also runs, in the manager, the task that deletes keys at
// their deletion date (see reaper.go).
type Provider struct {
	client       client.Client
	namespace    string
	clock        clock.WithTicker
	log          logr.Logger
	sealer       *sealer
	reapInterval time.Duration
	// view answers reads of key Secrets without asking the apiserver (see view.go).
	view *view

	// wake tells the reaper that a deletion date was set, so it can look again.
	wake chan struct{}
	// changes carries the IDs of keys the reaper deleted.
	changes chan string
}

var (
	_ kms.Provider = (*Provider)(nil)
	_ kms.Notifier = (*Provider)(nil)
)

// New builds an embedded provider, creating its root key on first use. It refuses to start
// with a root key that cannot open the keys it holds (see rootkey.go). Its view of the key
// Secrets is kept until ctx ends; env.Client must be able to watch.
func New(ctx context.Context, env kms.Env, opts Options) (*Provider, error) {
	if env.Clock == nil {
		env.Clock = clock.RealClock{}
	}
	if opts.ReapInterval <= 0 {
		opts.ReapInterval = time.Minute
	}
	root, err := loadRootKey(ctx, env.Client, env.Namespace, opts.RootKeyFile)
	if err != nil {
		return nil, err
	}
	s, err := newSealer(root)
	if err != nil {
		return nil, err
	}
	p := &Provider{
		client:       env.Client,
		namespace:    env.Namespace,
		clock:        env.Clock,
		log:          env.Log,
		sealer:       s,
		reapInterval: opts.ReapInterval,
		wake:         make(chan struct{}, 1),
		changes:      make(chan string, 1024),
	}
	if p.view, err = startView(ctx, env.Client, env.Namespace, env.Log, p.changedElsewhere); err != nil {
		return nil, err
	}
	if err := p.verifyRootKey(ctx); err != nil {
		return nil, err
	}
	// The check value lets a person match a root key backup to the keys (docs/embedded.md, "Check values").
	p.log.Info("Embedded KMS root key loaded", "rootKeyCheck", s.check())
	return p, nil
}

// Changes delivers the IDs of keys the reaper deleted, and of keys someone else changed (a
// person editing a key's Secret, a previous leader's last write), as the view learns of them.
func (p *Provider) Changes() <-chan string { return p.changes }

// changedElsewhere passes on a key Secret someone else changed.
func (p *Provider) changedElsewhere(name string) {
	id, ok := strings.CutPrefix(name, secretPrefix)
	if !ok || !kms.ValidKeyID(id) {
		return
	}
	select {
	case p.changes <- id:
	default:
		// Nobody is draining the channel; the operator's resync reports the change later.
	}
}

// Observe reports the key with this ID.
func (p *Provider) Observe(ctx context.Context, keyID string) (kms.Key, error) {
	_, r, err := p.get(ctx, keyID)
	if err != nil {
		return kms.Key{}, err
	}
	return r.key(), nil
}

// Lookup reports the key a Create with this token made, else the key claimed for an owner
// with this UID. The key ID is derived from the token, and a key the view does not have is
// asked of the apiserver, so the first answer is exact: a Create that wrote its Secret is
// always found, one that did not never is. A claim writes the owner's UID as a label in the
// same update as the record; the view has this process's claims at once, and another's as soon
// as the watch delivers them. A claim the view has not seen yet can only be a previous
// leader's, for a resource whose status lost the key: its Create then meets the key's alias,
// and claims the key again (a claim of a key already its own changes nothing).
func (p *Provider) Lookup(ctx context.Context, token string) (kms.Key, error) {
	if token == "" {
		return kms.Key{}, &kms.NotFoundError{Token: token}
	}
	k, err := p.Observe(ctx, keyIDFor(token))
	if !kms.IsNotFound(err) || len(validation.IsValidLabelValue(token)) > 0 {
		return k, err
	}
	claimed, err := p.view.byIndex(byOwner, token)
	if err != nil {
		return kms.Key{}, fmt.Errorf("looking up the key claimed for %s: %w", token, err)
	}
	for _, s := range claimed {
		if r, err := readRecord(s); err == nil && isKeySecret(s) && r.owner().UID == token {
			return r.key(), nil
		}
	}
	return kms.Key{}, &kms.NotFoundError{Token: token}
}

// Create makes a key, or returns the one an earlier Create with the same token made.
func (p *Provider) Create(ctx context.Context, req kms.CreateRequest) (kms.Key, error) {
	if req.Token == "" {
		return kms.Key{}, fmt.Errorf("creating key %q: a creation token is required", req.Alias)
	}
	id := keyIDFor(req.Token)
	// Only the view is asked: a key it does not have yet (another process made it a moment
	// ago) is found by the Secret's Create below, which the apiserver refuses for a name taken.
	if s, ok := p.view.get(secretName(id)); ok {
		if _, r, err := p.parse(id, s); err == nil {
			return r.key(), nil
		} else if !kms.IsNotFound(err) {
			return kms.Key{}, err
		}
	}
	if err := checkSupported(req.KeySpec); err != nil {
		return kms.Key{}, err
	}
	// Bounded, so that a create that reserved the alias and stalled is over long before its
	// reservation may be taken over (see staleReservation).
	ctx, cancel := context.WithTimeout(ctx, createDeadline)
	defer cancel()
	if err := p.reserveAlias(ctx, req.Alias, id); err != nil {
		return kms.Key{}, err
	}
	if err := p.checkAliasFree(ctx, req.Alias, id); err != nil {
		if inUse := kms.AsAliasInUse(err); inUse != nil {
			// A key from before reservations holds it: the reservation names that key now,
			// so the next create is told at once.
			p.handOver(ctx, req.Alias, id, inUse.KeyID)
		}
		return kms.Key{}, err
	}

	r := &record{
		ID:           id,
		RootKeyCheck: p.sealer.check(),
		Alias:        req.Alias,
		Description:  req.Description,
		KeySpec:      req.KeySpec,
		KeyUsage:     req.KeyUsage,
		Origin:       req.Origin,
		State:        kms.StatePendingImport,
		CreatedAt:    p.clock.Now().UTC(),
		Token:        req.Token,
	}
	if !req.Owner.IsZero() {
		owner := req.Owner
		r.Owner = &owner
	}
	if !req.Provenance.IsZero() {
		provenance := req.Provenance
		r.Provenance = &provenance
	}
	var sealed []byte
	if req.Origin != kms.OriginExternal {
		material, err := generateMaterial(req.KeySpec)
		if err != nil {
			return kms.Key{}, err
		}
		sealed, err = p.sealer.seal(id, material)
		clear(material)
		if err != nil {
			return kms.Key{}, err
		}
		r.State, r.HasMaterial = kms.StateEnabled, true
	}
	secret, err := newSecret(p.namespace, r, sealed)
	if err != nil {
		return kms.Key{}, err
	}
	done := p.view.write(secret.Name)
	defer done()
	if err := p.client.Create(ctx, secret); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// A concurrent Create with the same token won; report its key.
			return p.Observe(ctx, id)
		}
		return kms.Key{}, fmt.Errorf("creating key %s: %w", id, err)
	}
	p.view.saw(secret)
	stored, err := readRecord(secret)
	if err != nil {
		return kms.Key{}, err
	}
	return stored.key(), nil
}

// checkAliasFree refuses an alias that another key, not yet deleted, already has, as a cloud
// KMS does. The key being created (a concurrent Create with the same token) does not count.
// Aliases are reserved atomically (see reserveAlias); this finds the keys made before
// reservations existed.
func (p *Provider) checkAliasFree(_ context.Context, alias, id string) error {
	holders, err := p.view.byIndex(byAlias, aliasHash(alias))
	if err != nil {
		return fmt.Errorf("looking up alias %q: %w", alias, err)
	}
	for _, s := range holders {
		if r, err := readRecord(s); err == nil && r.ID != id && r.Alias == alias && r.State != kms.StateDeleted {
			return &kms.AliasInUseError{Alias: alias, KeyID: r.ID}
		}
	}
	return nil
}

// Enable moves a Disabled key to Enabled.
func (p *Provider) Enable(ctx context.Context, keyID string) error {
	return p.transition(ctx, keyID, "enable", func(r *record) (bool, error) {
		switch r.State {
		case kms.StateEnabled:
			return false, nil
		case kms.StateDisabled:
			r.State = kms.StateEnabled
			return true, nil
		}
		return false, &kms.StateError{KeyID: keyID, Call: "enable", State: r.State}
	})
}

// Disable moves an Enabled key to Disabled.
func (p *Provider) Disable(ctx context.Context, keyID string) error {
	return p.transition(ctx, keyID, "disable", func(r *record) (bool, error) {
		switch r.State {
		case kms.StateDisabled:
			return false, nil
		case kms.StateEnabled:
			r.State = kms.StateDisabled
			return true, nil
		}
		return false, &kms.StateError{KeyID: keyID, Call: "disable", State: r.State}
	})
}

// ScheduleDeletion sets the key's deletion date pendingDays from now.
func (p *Provider) ScheduleDeletion(ctx context.Context, keyID string, pendingDays int) error {
	if pendingDays < kms.MinPendingDays || pendingDays > kms.MaxPendingDays {
		return &kms.RejectedError{Reason: fmt.Sprintf("pendingDays must be %d to %d, not %d", kms.MinPendingDays, kms.MaxPendingDays, pendingDays)}
	}
	err := p.transition(ctx, keyID, "schedule deletion of", func(r *record) (bool, error) {
		switch r.State {
		case kms.StatePendingDeletion:
			return false, nil
		case kms.StateEnabled, kms.StateDisabled, kms.StatePendingImport:
			date := p.clock.Now().UTC().Add(time.Duration(pendingDays) * 24 * time.Hour).Truncate(time.Second)
			r.State, r.DeletionDate = kms.StatePendingDeletion, &date
			return true, nil
		}
		return false, &kms.StateError{KeyID: keyID, Call: "schedule deletion of", State: r.State}
	})
	if err == nil {
		p.wakeReaper()
	}
	return err
}

// CancelDeletion leaves a key pending deletion Disabled, or PendingImport when it is an
// External key that never received material, as the KMS does.
func (p *Provider) CancelDeletion(ctx context.Context, keyID string) error {
	return p.transition(ctx, keyID, "cancel deletion of", func(r *record) (bool, error) {
		switch r.State {
		case kms.StateEnabled, kms.StateDisabled, kms.StatePendingImport:
			return false, nil
		case kms.StatePendingDeletion:
			r.State, r.DeletionDate = kms.StateDisabled, nil
			if !r.HasMaterial {
				r.State = kms.StatePendingImport
			}
			return true, nil
		}
		return false, &kms.StateError{KeyID: keyID, Call: "cancel deletion of", State: r.State}
	})
}

// Owner reports the key's recorded owner.
func (p *Provider) Owner(ctx context.Context, keyID string) (kms.Owner, error) {
	_, r, err := p.get(ctx, keyID)
	if err != nil {
		return kms.Owner{}, err
	}
	return r.owner(), nil
}

// Claim records owner as the key's owner if its recorded owner is still previous. The write
// carries the resourceVersion read, so of two claims from one previous owner only one wins.
func (p *Provider) Claim(ctx context.Context, keyID string, owner, previous kms.Owner) error {
	return p.transition(ctx, keyID, "claim", func(r *record) (bool, error) {
		current := r.owner()
		switch {
		case current == owner:
			return false, nil
		case current != previous:
			return false, &kms.ClaimError{KeyID: keyID}
		case r.State == kms.StateDeleted:
			return false, &kms.StateError{KeyID: keyID, Call: "claim", State: r.State}
		}
		r.Owner, r.Tags = &owner, nil
		return true, nil
	})
}

// SetDescription changes the key's description.
func (p *Provider) SetDescription(ctx context.Context, keyID, description string) error {
	return p.transition(ctx, keyID, "describe", func(r *record) (bool, error) {
		if r.State == kms.StateDeleted {
			return false, &kms.StateError{KeyID: keyID, Call: "describe", State: r.State}
		}
		if r.Description == description {
			return false, nil
		}
		r.Description = description
		return true, nil
	})
}

// get reads a key's Secret from the view; one the view does not have is asked of the
// apiserver, so "no such key" is never an answer of a view that is behind. Only an ID of the
// form the KMS gives out is looked up, and only a Secret that is a key record is answered with:
// any other ID, or Secret, is no key. An ID comes from a tenant's spec.keyID, so it must never
// name another Secret of the KMS namespace (the root key's, an alias reservation) nor tell
// which of them exist.
func (p *Provider) get(ctx context.Context, keyID string) (*corev1.Secret, *record, error) {
	if !kms.ValidKeyID(keyID) {
		return nil, nil, &kms.NotFoundError{KeyID: keyID}
	}
	if s, ok := p.view.get(secretName(keyID)); ok {
		return p.parse(keyID, s)
	}
	return p.getLive(ctx, keyID)
}

// getLive reads a key's Secret from the apiserver, and tells the view what it found.
func (p *Provider) getLive(ctx context.Context, keyID string) (*corev1.Secret, *record, error) {
	if !kms.ValidKeyID(keyID) {
		return nil, nil, &kms.NotFoundError{KeyID: keyID}
	}
	s := &corev1.Secret{}
	if err := p.client.Get(ctx, client.ObjectKey{Namespace: p.namespace, Name: secretName(keyID)}, s); err != nil {
		if apierrors.IsNotFound(err) {
			p.view.forget(secretName(keyID))
			return nil, nil, &kms.NotFoundError{KeyID: keyID}
		}
		return nil, nil, fmt.Errorf("reading key %s: %w", keyID, err)
	}
	if isKeySecret(s) {
		p.view.saw(s)
	}
	return p.parse(keyID, s)
}

func (p *Provider) parse(keyID string, s *corev1.Secret) (*corev1.Secret, *record, error) {
	if !isKeySecret(s) {
		return nil, nil, &kms.NotFoundError{KeyID: keyID}
	}
	r, err := readRecord(s)
	if err != nil {
		return nil, nil, &kms.UnreadableError{KeyID: keyID, Reason: fmt.Sprintf(
			"%v; restore Secret %s/%s from a backup", err, s.Namespace, s.Name)}
	}
	return s, r, nil
}

// transition applies change to the key's record and writes the Secret once, only when
// change reports that something changed. The update carries the resourceVersion read, so two
// writers never both win.
func (p *Provider) transition(ctx context.Context, keyID, call string, change func(*record) (bool, error)) error {
	return p.transitionSecret(ctx, keyID, call, func(r *record, _ *corev1.Secret) (bool, error) { return change(r) })
}

// transitionSecret is transition for changes that also set sealed fields of the Secret. The
// change is judged on the view; a write that loses a race with another writer of the key (the
// reaper, another call, a person) is tried again on a live read, so the change is judged
// against the state that won. The apiserver's answer to the write goes into the view: what the
// call reports after is the state stored, not the state meant.
func (p *Provider) transitionSecret(ctx context.Context, keyID, call string, change func(*record, *corev1.Secret) (bool, error)) error {
	read := p.get
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, r, err := read(ctx, keyID)
		read = p.getLive
		if err != nil {
			return err
		}
		if s.Data == nil {
			s.Data = map[string][]byte{}
		}
		changed, err := change(r, s)
		if err != nil || !changed {
			return err
		}
		r.RootKeyCheck = p.sealer.check()
		if err := writeRecord(s, r); err != nil {
			return err
		}
		done := p.view.write(s.Name)
		defer done()
		if err := p.client.Update(ctx, s); err != nil {
			if apierrors.IsNotFound(err) {
				return &kms.NotFoundError{KeyID: keyID} // deleted since it was read
			}
			return fmt.Errorf("%s key %s: %w", call, keyID, err)
		}
		p.view.saw(s)
		return nil
	})
	return err
}

func (p *Provider) wakeReaper() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}
