package embedded

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Import parameters are valid for a day, as in the cloud KMS.
const importParametersValidity = 24 * time.Hour

var _ kms.Importer = (*Provider)(nil)

// wrappingKeyID is the additional data the wrapping key is sealed under, distinct from the
// key's own material.
func wrappingKeyID(keyID string) string { return keyID + "/wrapping-key" }

// ImportParameters issues a fresh RSA 2048 wrapping key and token for a PendingImport External
// key. The private half is sealed under the root key like any material; older tokens stop
// being accepted.
func (p *Provider) ImportParameters(ctx context.Context, keyID string) (kms.ImportParameters, error) {
	var params kms.ImportParameters
	err := p.transitionSecret(ctx, keyID, "issue import parameters for", func(r *record, s *corev1.Secret) (bool, error) {
		if err := importable(keyID, r, "issue import parameters for"); err != nil {
			return false, err
		}
		wrapping, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return false, fmt.Errorf("generating wrapping key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(wrapping)
		if err != nil {
			return false, err
		}
		sealed, err := p.sealer.seal(wrappingKeyID(keyID), der)
		clear(der)
		if err != nil {
			return false, err
		}
		public, err := x509.MarshalPKIXPublicKey(&wrapping.PublicKey)
		if err != nil {
			return false, err
		}
		token, err := randomBytes(32)
		if err != nil {
			return false, err
		}
		r.Import = &importRecord{
			Token:     base64.RawURLEncoding.EncodeToString(token),
			PublicKey: public,
			ExpiresAt: p.clock.Now().UTC().Add(importParametersValidity).Truncate(time.Second),
		}
		s.Data[wrappingKeyField] = sealed
		params = kms.ImportParameters{PublicKey: public, ImportToken: r.Import.Token, ExpiresAt: r.Import.ExpiresAt}
		return true, nil
	})
	return params, err
}

// ImportMaterial unwraps material with the wrapping key of importToken, checks it fits the key
// spec (and is the material the key had before, if any), and makes the key Enabled.
func (p *Provider) ImportMaterial(ctx context.Context, keyID, importToken string, wrapped []byte, expiresAt time.Time) error {
	tokenHash := sha256.Sum256([]byte(importToken))
	err := p.transitionSecret(ctx, keyID, "import material into", func(r *record, s *corev1.Secret) (bool, error) {
		if r.HasMaterial && hmac.Equal(r.ImportedTokenHash, tokenHash[:]) {
			return false, nil // Already imported with this very token.
		}
		if err := importable(keyID, r, "import material into"); err != nil {
			return false, err
		}
		now := p.clock.Now()
		if r.Import == nil || !hmac.Equal([]byte(r.Import.Token), []byte(importToken)) || !now.Before(r.Import.ExpiresAt) {
			return false, &kms.ImportError{Code: kms.ImportTokenInvalid, Reason: fmt.Sprintf(
				"the import token is expired, superseded or not for key %s", keyID)}
		}
		if !expiresAt.IsZero() && !expiresAt.After(now) {
			return false, &kms.RejectedError{Reason: "the material's expiry time has passed: choose a time in the future"}
		}
		material, err := p.unwrap(keyID, s, wrapped)
		if err != nil {
			return false, err
		}
		defer clear(material)
		if want := symmetricSize[r.KeySpec]; len(material) != want {
			return false, &kms.ImportError{Code: kms.ImportMaterialInvalid, Reason: fmt.Sprintf(
				"the unwrapped material is %d bytes; %s keys take %d", len(material), r.KeySpec, want)}
		}
		hash := p.sealer.materialHash(keyID, material)
		if r.MaterialHash != nil && !hmac.Equal(hash, r.MaterialHash) {
			return false, &kms.ImportError{Code: kms.ImportMaterialMismatch, Reason: fmt.Sprintf(
				"key %s had other material before; only that same material can be imported again", keyID)}
		}
		sealed, err := p.sealer.seal(keyID, material)
		if err != nil {
			return false, err
		}
		s.Data[materialField] = sealed
		r.State, r.HasMaterial, r.MaterialHash, r.Import = kms.StateEnabled, true, hash, nil
		r.ImportedTokenHash = tokenHash[:]
		r.MaterialExpiresAt = nil
		if !expiresAt.IsZero() {
			at := expiresAt.UTC()
			r.MaterialExpiresAt = &at
		}
		return true, nil
	})
	if err == nil && !expiresAt.IsZero() {
		p.wakeReaper()
	}
	return err
}

// symmetricSize is the material length of each key spec that takes imported material.
var symmetricSize = map[string]int{"AES_256": 32, "SM4": 16}

// importable says whether a key may take import parameters or material now.
func importable(keyID string, r *record, call string) error {
	if r.Origin != kms.OriginExternal {
		return &kms.RejectedError{Reason: fmt.Sprintf("key %s has origin %s: only External keys take imported material", keyID, r.Origin)}
	}
	if _, ok := symmetricSize[r.KeySpec]; !ok {
		return &kms.UnsupportedError{Reason: fmt.Sprintf(
			"importing %s material is not supported by the embedded provider: only AES_256 and SM4", r.KeySpec)}
	}
	if r.State != kms.StatePendingImport {
		return &kms.StateError{KeyID: keyID, Call: call, State: r.State}
	}
	return nil
}

func (p *Provider) unwrap(keyID string, s *corev1.Secret, wrapped []byte) ([]byte, error) {
	der, err := p.sealer.open(wrappingKeyID(keyID), s.Data[wrappingKeyField])
	if err != nil {
		return nil, err
	}
	defer clear(der)
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("reading the wrapping key of %s: %w", keyID, err)
	}
	priv, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("the wrapping key of %s is not RSA", keyID)
	}
	material, err := rsa.DecryptOAEP(sha256.New(), nil, priv, wrapped, nil)
	if err != nil {
		return nil, &kms.ImportError{Code: kms.ImportMaterialInvalid, Reason: fmt.Sprintf(
			"the material does not unwrap: wrap it with %s under the public key issued with this token", kms.WrappingAlgorithm)}
	}
	return material, nil
}
