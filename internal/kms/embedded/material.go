package embedded

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// rootKeySize is the size of the AES-256 key that seals every key's material.
const rootKeySize = 32

// generateMaterial makes fresh key material for a spec: raw bytes for symmetric keys, a PKCS#8
// DER private key for key pairs. SM2 needs curve arithmetic that the standard library does not
// have, and no maintained SM2 library is available to this project, so it is refused rather
// than hand-rolled (see checkSupported).
func generateMaterial(spec string) ([]byte, error) {
	switch spec {
	case "AES_256":
		return randomBytes(32)
	case "SM4":
		// An SM4 key is 128 uniformly random bits; making one needs no SM4 implementation.
		return randomBytes(16)
	case "RSA_2048", "RSA_3072", "RSA_4096":
		bits := map[string]int{"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}[spec]
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			return nil, fmt.Errorf("generating %s key: %w", spec, err)
		}
		return x509.MarshalPKCS8PrivateKey(k)
	case "EC_P256", "EC_P384":
		curve := elliptic.P256()
		if spec == "EC_P384" {
			curve = elliptic.P384()
		}
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating %s key: %w", spec, err)
		}
		return x509.MarshalPKCS8PrivateKey(k)
	default:
		return nil, unsupportedSpec(spec)
	}
}

// checkSupported refuses, before anything is stored, a spec generateMaterial cannot serve.
func checkSupported(spec string) error {
	switch spec {
	case "AES_256", "SM4", "RSA_2048", "RSA_3072", "RSA_4096", "EC_P256", "EC_P384":
		return nil
	}
	return unsupportedSpec(spec)
}

func unsupportedSpec(spec string) error {
	return &kms.UnsupportedError{Reason: fmt.Sprintf(
		"key spec %s is not supported by the embedded provider: keySpec cannot change, so create a new CustomerMasterKey "+
			"with another keySpec (and delete this one), or run the operator with a cloud KMS provider (--kms-provider=huaweicloud)", spec)}
}

func randomBytes(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("reading random bytes: %w", err)
	}
	return b, nil
}

// sealer encrypts key material under the root key with AES-256-GCM. The key ID is bound in as
// additional data, so sealed material copied into another key's Secret does not open. It also
// keys the hash that recognises imported material again (see materialHash).
type sealer struct {
	aead   cipher.AEAD
	macKey []byte
	// checkValue names the root key without revealing it (see check).
	checkValue string
}

func newSealer(rootKey []byte) (*sealer, error) {
	if len(rootKey) != rootKeySize {
		return nil, fmt.Errorf("root key must be %d bytes, got %d", rootKeySize, len(rootKey))
	}
	block, err := aes.NewCipher(rootKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	// A separate key for the hash, derived from the root key, so the hash reveals nothing
	// about the encryption key.
	mac := hmac.New(sha256.New, rootKey)
	mac.Write([]byte("cmk-operator/embedded-kms/material-hash"))
	check := hmac.New(sha256.New, rootKey)
	check.Write([]byte("cmk-operator/embedded-kms/root-key-check"))
	return &sealer{aead: aead, macKey: mac.Sum(nil), checkValue: hex.EncodeToString(check.Sum(nil)[:8])}, nil
}

// check is the root key's check value: 16 hex digits of a keyed hash of a fixed label. Equal
// root keys give equal values, so each key records the root key it is sealed under, and a
// backup can be matched to its keys, without the value saying anything about the root key.
func (s *sealer) check() string { return s.checkValue }

// materialHash is a keyed hash of a key's material: equal for the same material of the same
// key, and useless to anyone without the root key.
func (s *sealer) materialHash(keyID string, material []byte) []byte {
	mac := hmac.New(sha256.New, s.macKey)
	mac.Write([]byte(keyID))
	mac.Write([]byte{0})
	mac.Write(material)
	return mac.Sum(nil)
}

// seal returns nonce || ciphertext.
func (s *sealer) seal(keyID string, material []byte) ([]byte, error) {
	nonce, err := randomBytes(s.aead.NonceSize())
	if err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, material, []byte(keyID)), nil
}

func (s *sealer) open(keyID string, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed material is too short")
	}
	material, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(keyID))
	if err != nil {
		// The error from GCM says nothing of the material, but keep ours plainer still.
		return nil, fmt.Errorf("sealed material of key %s does not open under this root key", keyID)
	}
	return material, nil
}
