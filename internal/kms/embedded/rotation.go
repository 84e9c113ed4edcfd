package embedded

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

var (
	_ kms.Rotator = (*Provider)(nil)
	_ kms.Tagger  = (*Provider)(nil)
)

// rotationRecord is a key's automatic rotation as stored.
type rotationRecord struct {
	Enabled      bool `json:"enabled"`
	IntervalDays int  `json:"intervalDays"`
	// Since is when rotation was last turned on: the first rotation after it is an interval
	// later, not at once.
	Since        time.Time  `json:"since"`
	LastRotation *time.Time `json:"lastRotation,omitempty"`
	Rotations    int        `json:"rotations"`
}

// Each rotation keeps the material it replaces in the Secret under its version, so that data
// encrypted before the rotation still decrypts. The current material stays in materialField.
// Versions count from 0 (the material the key was made with); the current version is the
// number of rotations.
const oldMaterialPrefix = "material-v"

func oldMaterialField(version int) string { return oldMaterialPrefix + strconv.Itoa(version) }

// materialAAD is what a version's sealed material is bound to: the key's ID, and from the
// first rotation on its version too, so that no version opens in another's place.
func materialAAD(keyID string, version int) string {
	if version == 0 {
		return keyID // as every key was sealed before rotation existed
	}
	return keyID + "/v" + strconv.Itoa(version)
}

// version is the key's current material version.
func (r *record) version() int {
	if r.Rotation == nil {
		return 0
	}
	return r.Rotation.Rotations
}

// rotationDue is when the key's material next rotates: an interval after the last rotation,
// or after rotation was turned on. Only an Enabled key rotates; one enabled again after its
// time rotates at once.
func (r *record) rotationDue() (time.Time, bool) {
	rot := r.Rotation
	if rot == nil || !rot.Enabled || rot.IntervalDays <= 0 || r.State != kms.StateEnabled || !r.HasMaterial {
		return time.Time{}, false
	}
	from := rot.Since
	if rot.LastRotation != nil && rot.LastRotation.After(from) {
		from = *rot.LastRotation
	}
	return from.Add(time.Duration(rot.IntervalDays) * 24 * time.Hour), true
}

// Rotation reports the key's automatic rotation.
func (p *Provider) Rotation(ctx context.Context, keyID string) (kms.Rotation, error) {
	_, r, err := p.get(ctx, keyID)
	if err != nil {
		return kms.Rotation{}, err
	}
	if r.Rotation == nil {
		return kms.Rotation{}, nil
	}
	out := kms.Rotation{Enabled: r.Rotation.Enabled, IntervalDays: r.Rotation.IntervalDays, Rotations: r.Rotation.Rotations}
	if r.Rotation.LastRotation != nil {
		out.LastRotation = *r.Rotation.LastRotation
	}
	return out, nil
}

// SetRotation turns automatic rotation on with an interval, or off. Only symmetric keys with
// material the KMS made rotate, and only while they are Enabled or Disabled.
func (p *Provider) SetRotation(ctx context.Context, keyID string, enabled bool, intervalDays int) error {
	if enabled && (intervalDays < kms.MinRotationDays || intervalDays > kms.MaxRotationDays) {
		return &kms.RejectedError{Reason: fmt.Sprintf("the rotation interval must be %d to %d days, not %d",
			kms.MinRotationDays, kms.MaxRotationDays, intervalDays)}
	}
	call := "turn off rotation of"
	if enabled {
		call = "turn on rotation of"
	}
	err := p.transition(ctx, keyID, call, func(r *record) (bool, error) {
		rot := r.Rotation
		switch {
		case !enabled && (rot == nil || !rot.Enabled):
			return false, nil
		case enabled && !kms.CanRotate(r.KeySpec, r.Origin):
			return false, &kms.UnsupportedError{Reason: fmt.Sprintf("key %s cannot rotate: only symmetric keys (AES_256, SM4) "+
				"with origin KMS do; it is %s with origin %s", keyID, r.KeySpec, r.Origin)}
		case enabled && rot != nil && rot.Enabled && rot.IntervalDays == intervalDays:
			return false, nil
		case r.State != kms.StateEnabled && r.State != kms.StateDisabled:
			return false, &kms.StateError{KeyID: keyID, Call: call, State: r.State}
		}
		if rot == nil {
			rot = &rotationRecord{}
			r.Rotation = rot
		}
		if enabled && !rot.Enabled {
			rot.Since = p.clock.Now().UTC().Truncate(time.Second)
		}
		rot.Enabled = enabled
		if enabled {
			rot.IntervalDays = intervalDays
		}
		return true, nil
	})
	if err == nil && enabled {
		p.wakeReaper()
	}
	return err
}

// rotate replaces the key's material with new material, keeping the old under its version.
func (p *Provider) rotate(r *record, s *corev1.Secret, now time.Time) error {
	current, ok := s.Data[materialField]
	if !ok {
		return fmt.Errorf("key %s has no material to rotate", r.ID)
	}
	version := r.version()
	material, err := generateMaterial(r.KeySpec)
	if err != nil {
		return err
	}
	sealed, err := p.sealer.seal(materialAAD(r.ID, version+1), material)
	clear(material)
	if err != nil {
		return err
	}
	s.Data[oldMaterialField(version)] = current
	s.Data[materialField] = sealed
	r.Rotation.Rotations = version + 1
	r.Rotation.LastRotation = &now
	return nil
}

// Tags reports the key's user tags.
func (p *Provider) Tags(ctx context.Context, keyID string) (map[string]string, error) {
	_, r, err := p.get(ctx, keyID)
	if err != nil {
		return nil, err
	}
	return maps.Clone(r.UserTags), nil
}

// SetTags makes the key's user tags exactly tags. The owner is kept apart from them (see
// record.Owner), so no tag can change it.
func (p *Provider) SetTags(ctx context.Context, keyID string, tags map[string]string) error {
	return p.transition(ctx, keyID, "tag", func(r *record) (bool, error) {
		if r.State == kms.StateDeleted {
			return false, &kms.StateError{KeyID: keyID, Call: "tag", State: r.State}
		}
		if maps.Equal(r.UserTags, tags) {
			return false, nil
		}
		r.UserTags = maps.Clone(tags)
		if len(r.UserTags) == 0 {
			r.UserTags = nil
		}
		return true, nil
	})
}

// Encrypt encrypts plaintext under the key's current material with AES-256-GCM, for data the
// key protects. Only Enabled AES_256 keys encrypt. The ciphertext names the material version,
// so it still decrypts after the key rotates.
func (p *Provider) Encrypt(ctx context.Context, keyID string, plaintext []byte) ([]byte, error) {
	s, r, err := p.usable(ctx, keyID, "encrypt with")
	if err != nil {
		return nil, err
	}
	version := r.version()
	aead, err := p.dataCipher(r, s.Data[materialField], version)
	if err != nil {
		return nil, err
	}
	nonce, err := randomBytes(aead.NonceSize())
	if err != nil {
		return nil, err
	}
	out := binary.BigEndian.AppendUint32(nil, uint32(version))
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plaintext, []byte(keyID)), nil
}

// Decrypt decrypts what Encrypt made with this key, under whichever material version made it.
func (p *Provider) Decrypt(ctx context.Context, keyID string, ciphertext []byte) ([]byte, error) {
	s, r, err := p.usable(ctx, keyID, "decrypt with")
	if err != nil {
		return nil, err
	}
	if len(ciphertext) < 4 {
		return nil, &kms.RejectedError{Reason: "the ciphertext is too short"}
	}
	version := int(binary.BigEndian.Uint32(ciphertext))
	sealed, ok := s.Data[materialField], version == r.version()
	if !ok {
		sealed, ok = s.Data[oldMaterialField(version)]
	}
	if !ok {
		return nil, &kms.RejectedError{Reason: fmt.Sprintf("key %s has no material version %d", keyID, version)}
	}
	aead, err := p.dataCipher(r, sealed, version)
	if err != nil {
		return nil, err
	}
	rest := ciphertext[4:]
	if len(rest) < aead.NonceSize() {
		return nil, &kms.RejectedError{Reason: "the ciphertext is too short"}
	}
	plaintext, err := aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], []byte(keyID))
	if err != nil {
		return nil, &kms.RejectedError{Reason: fmt.Sprintf("the ciphertext was not made by key %s, or was altered", keyID)}
	}
	return plaintext, nil
}

// usable reads a key that may encrypt and decrypt: Enabled, AES_256.
func (p *Provider) usable(ctx context.Context, keyID, call string) (*corev1.Secret, *record, error) {
	s, r, err := p.get(ctx, keyID)
	if err != nil {
		return nil, nil, err
	}
	if r.State != kms.StateEnabled {
		return nil, nil, &kms.StateError{KeyID: keyID, Call: call, State: r.State}
	}
	if r.KeySpec != "AES_256" {
		return nil, nil, &kms.UnsupportedError{Reason: fmt.Sprintf("the embedded KMS encrypts with AES_256 keys only; key %s is %s", keyID, r.KeySpec)}
	}
	return s, r, nil
}

// dataCipher opens a version of the key's material as an AES-GCM cipher.
func (p *Provider) dataCipher(r *record, sealed []byte, version int) (cipher.AEAD, error) {
	material, err := p.sealer.open(materialAAD(r.ID, version), sealed)
	if err != nil {
		return nil, &kms.UnreadableError{KeyID: r.ID, Reason: err.Error()}
	}
	defer clear(material)
	block, err := aes.NewCipher(material)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// dropOldMaterial removes every earlier material version from a Secret: when the key's
// material is destroyed, all of it is.
func dropOldMaterial(s *corev1.Secret) {
	for field := range s.Data {
		if strings.HasPrefix(field, oldMaterialPrefix) {
			delete(s.Data, field)
		}
	}
}
