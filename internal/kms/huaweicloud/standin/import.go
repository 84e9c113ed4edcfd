package standin

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"
)

func (s *Server) parameters(k *key, algorithm string) (any, *apiError) {
	switch {
	case k.origin != "external":
		return nil, fail(http.StatusBadRequest, "KMS.0309", "the key is not external")
	case k.state != "5":
		return nil, fail(http.StatusBadRequest, "KMS.0310", "the key is not pending import")
	case algorithm != "RSAES_OAEP_SHA_256":
		return nil, fail(http.StatusBadRequest, "KMS.0001", "unsupported wrapping_algorithm")
	}
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fail(http.StatusInternalServerError, "KMS.0500", err.Error())
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	token := make([]byte, 24)
	_, _ = rand.Read(token)
	k.wrapping, k.token = priv, hex.EncodeToString(token)
	k.tokenExpires = s.Clock.Now().Add(24 * time.Hour)
	return map[string]any{"key_id": k.id, "import_token": k.token, "public_key": base64.StdEncoding.EncodeToString(der),
		"expiration_time": k.tokenExpires.Unix()}, nil // seconds, unlike key timestamps
}

func (s *Server) importMaterial(k *key, token, encrypted string, expirationSeconds int64) (any, *apiError) {
	switch {
	case k.origin != "external":
		return nil, fail(http.StatusBadRequest, "KMS.0309", "the key is not external")
	case k.state != "5":
		return nil, fail(http.StatusBadRequest, "KMS.0310", "the key is not pending import")
	case s.tokenOfAnother(k, token):
		return nil, fail(http.StatusBadRequest, "KMS.2603", "the import token belongs to another key")
	case k.token == "" || token != k.token:
		return nil, fail(http.StatusBadRequest, "KMS.2605", "import token verification failed")
	case !s.Clock.Now().Before(k.tokenExpires):
		return nil, fail(http.StatusBadRequest, "KMS.2601", "invalid import token")
	}
	wrapped, err := base64.StdEncoding.DecodeString(encrypted)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "KMS.0001", "encrypted_key_material is not base64")
	}
	material, err := rsa.DecryptOAEP(sha256.New(), nil, k.wrapping, wrapped, nil)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "KMS.0001", "encrypted_key_material does not decrypt")
	}
	if want := map[string]int{"AES_256": 32, "SM4": 16}[k.spec]; len(material) != want {
		return nil, fail(http.StatusBadRequest, "KMS.0001", fmt.Sprintf("key material must be %d bytes", want))
	}
	sum := sha256.Sum256(material)
	if k.materialHash != nil && !bytes.Equal(k.materialHash, sum[:]) {
		return nil, fail(http.StatusBadRequest, "KMS.2606", "only the same key material can be imported again")
	}
	k.material, k.materialHash, k.state, k.token = material, sum[:], "2", ""
	k.materialExpires = time.Time{}
	if expirationSeconds > 0 {
		k.materialExpires = time.Unix(expirationSeconds, 0)
	}
	return map[string]any{}, nil
}

// tokenOfAnother reports whether token is the current import token of a key other than k. The
// three token refusals (KMS.2601 invalid, KMS.2603 another key's, KMS.2605 verification
// failed) are Huawei's error-code table's; which case answers which is the stand-in's reading
// of their descriptions.
func (s *Server) tokenOfAnother(k *key, token string) bool {
	for _, other := range s.keys {
		if other != k && other.token != "" && other.token == token {
			return true
		}
	}
	return false
}
