package embedded

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Each key lives in one Secret in the KMS namespace: its record in plain JSON (no secrets in
// it), and its material sealed under the root key. Labels let the reaper list only the keys
// pending deletion, and Create find a key by alias, without reading every Secret.
const secretType corev1.SecretType = "kms.cmk.io/embedded-key"

const (
	secretPrefix     = "cmk-"
	recordField      = "key.json"
	materialField    = "material"
	wrappingKeyField = "wrapping-key"
	labelManagedBy   = "app.kubernetes.io/managed-by"
	managedByValue   = "cmk-operator-embedded-kms"
	labelKey         = "kms.cmk.io/embedded-key"
	labelState       = "kms.cmk.io/state"
	labelAliasHash   = "kms.cmk.io/alias-hash"
	// labelOwnerUID lets Lookup find a key claimed for a resource by the resource's UID.
	labelOwnerUID = "kms.cmk.io/owner-uid"
	// labelRootKeyCheck names the root key a key's material is sealed under (see sealer.check),
	// so a start with another root key finds the keys it could not open with one list.
	labelRootKeyCheck = "kms.cmk.io/root-key-check"
	// labelCluster names the cluster of a key's provenance, so the orphan sweep lists a
	// cluster's keys by index.
	labelCluster = "kms.cmk.io/cluster"
	// labelDue marks keys the reaper must act on at a time: a deletion date or material expiry.
	labelDue = "kms.cmk.io/due"
)

// record is a key's metadata as stored. It never holds material.
type record struct {
	ID           string     `json:"id"`
	Alias        string     `json:"alias"`
	Description  string     `json:"description,omitempty"`
	KeySpec      string     `json:"keySpec"`
	KeyUsage     string     `json:"keyUsage"`
	Origin       string     `json:"origin"`
	State        kms.State  `json:"state"`
	CreatedAt    time.Time  `json:"createdAt"`
	DeletionDate *time.Time `json:"deletionDate,omitempty"`
	DeletedAt    *time.Time `json:"deletedAt,omitempty"`
	HasMaterial  bool       `json:"hasMaterial"`
	Token        string     `json:"token"`
	// Owner is the resource the key belongs to (see kms.Owner); nil for a key made for no
	// resource and never claimed.
	Owner *kms.Owner `json:"owner,omitempty"`
	// Provenance is what the operator recorded when it made the key (see kms.Provenance); nil
	// for a key made without one.
	Provenance *kms.Provenance `json:"provenance,omitempty"`
	// Tags are the owner as records written before Owner existed kept it.
	Tags map[string]string `json:"tags,omitempty"`
	// RootKeyCheck is the check value of the root key the key's sealed fields are sealed under.
	RootKeyCheck string `json:"rootKeyCheck,omitempty"`

	// Bring your own key. MaterialHash is a keyed hash of the first material imported, so that
	// a re-import can be checked to be the same without keeping the plaintext anywhere else.
	MaterialHash []byte `json:"materialHash,omitempty"`
	// ImportedTokenHash is a hash of the token the current material came with, so that a
	// repeated import (a retry whose answer was lost) succeeds without doing anything.
	ImportedTokenHash []byte        `json:"importedTokenHash,omitempty"`
	MaterialExpiresAt *time.Time    `json:"materialExpiresAt,omitempty"`
	Import            *importRecord `json:"import,omitempty"`

	// Rotation is the key's automatic rotation (see rotation.go); nil when never turned on.
	Rotation *rotationRecord `json:"rotation,omitempty"`
	// UserTags are the tags users set. The owner is kept in Owner, apart from them.
	UserTags map[string]string `json:"userTags,omitempty"`
}

// importRecord is the latest import parameters issued for a key; the wrapping private key is
// sealed in the Secret's wrapping-key field.
type importRecord struct {
	Token     string    `json:"token"`
	PublicKey []byte    `json:"publicKey"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// nextDue is when the reaper must next act on the key, if ever: its deletion date, else the
// earlier of its material's expiry and its next rotation.
func (r *record) nextDue() (time.Time, bool) {
	if r.State == kms.StatePendingDeletion && r.DeletionDate != nil {
		return *r.DeletionDate, true
	}
	var due time.Time
	if r.HasMaterial && r.MaterialExpiresAt != nil {
		due = *r.MaterialExpiresAt
	}
	if at, ok := r.rotationDue(); ok && (due.IsZero() || at.Before(due)) {
		due = at
	}
	return due, !due.IsZero()
}

func (r *record) key() kms.Key {
	k := kms.Key{
		ID:          r.ID,
		Alias:       r.Alias,
		Description: r.Description,
		KeySpec:     r.KeySpec,
		KeyUsage:    r.KeyUsage,
		Origin:      r.Origin,
		State:       r.State,
		HasMaterial: r.HasMaterial,
	}
	if r.State == kms.StatePendingDeletion && r.DeletionDate != nil {
		k.DeletionDate = *r.DeletionDate
	}
	if r.HasMaterial && r.MaterialExpiresAt != nil {
		k.MaterialExpiresAt = *r.MaterialExpiresAt
	}
	return k
}

// owner is the key's recorded owner. Records written before Owner existed kept the creating
// resource in their tags.
func (r *record) owner() kms.Owner {
	if r.Owner != nil {
		return *r.Owner
	}
	return kms.Owner{Namespace: r.Tags["kms.cmk.io/namespace"], Name: r.Tags["kms.cmk.io/name"], UID: r.Tags["kms.cmk.io/uid"]}
}

// keyIDFor derives a key's ID from its creation token, so that Create is idempotent without a
// lookup table: the same token always names the same Secret. It is shaped like a UUID, as
// cloud KMS key IDs are.
func keyIDFor(token string) string {
	sum := sha256.Sum256([]byte("cmk-operator/embedded-kms/key-id/" + token))
	h := hex.EncodeToString(sum[:16])
	return fmt.Sprintf("%s-%s-%s-%s-%s", h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])
}

func secretName(keyID string) string { return secretPrefix + keyID }

// isKeySecret tells a key's Secret from any other Secret that happens to have a key's name.
func isKeySecret(s *corev1.Secret) bool {
	return s.Type == secretType && s.Labels[labelKey] == "true"
}

// aliasHash fits an alias, which may hold ':' and '/', into a label value.
func aliasHash(alias string) string {
	sum := sha256.Sum256([]byte(alias))
	return hex.EncodeToString(sum[:20])
}

func newSecret(namespace string, r *record, sealedMaterial []byte) (*corev1.Secret, error) {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName(r.ID), Namespace: namespace},
		Type:       secretType,
	}
	if err := writeRecord(s, r); err != nil {
		return nil, err
	}
	if sealedMaterial != nil {
		s.Data[materialField] = sealedMaterial
	}
	return s, nil
}

// writeRecord stores r in s and keeps the labels in step with it.
func writeRecord(s *corev1.Secret, r *record) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding key %s: %w", r.ID, err)
	}
	if s.Data == nil {
		s.Data = map[string][]byte{}
	}
	s.Data[recordField] = raw
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	s.Labels[labelManagedBy] = managedByValue
	s.Labels[labelKey] = "true"
	s.Labels[labelState] = string(r.State)
	s.Labels[labelAliasHash] = aliasHash(r.Alias)
	if r.RootKeyCheck != "" {
		s.Labels[labelRootKeyCheck] = r.RootKeyCheck
	}
	if uid := r.owner().UID; len(validation.IsValidLabelValue(uid)) == 0 {
		s.Labels[labelOwnerUID] = uid
	} else {
		delete(s.Labels, labelOwnerUID)
	}
	if p := r.Provenance; p != nil && len(validation.IsValidLabelValue(p.Cluster)) == 0 {
		s.Labels[labelCluster] = p.Cluster
	} else {
		delete(s.Labels, labelCluster)
	}
	if _, due := r.nextDue(); due {
		s.Labels[labelDue] = "true"
	} else {
		delete(s.Labels, labelDue)
	}
	// Secret data follows the record: no material without HasMaterial, no wrapping key
	// without outstanding import parameters.
	if !r.HasMaterial {
		delete(s.Data, materialField)
		dropOldMaterial(s)
	}
	if r.Import == nil {
		delete(s.Data, wrappingKeyField)
	}
	return nil
}

func readRecord(s *corev1.Secret) (*record, error) {
	raw, ok := s.Data[recordField]
	if !ok {
		return nil, fmt.Errorf("secret %s/%s holds no embedded key record", s.Namespace, s.Name)
	}
	r := &record{}
	if err := json.Unmarshal(raw, r); err != nil {
		return nil, fmt.Errorf("decoding secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return r, nil
}
