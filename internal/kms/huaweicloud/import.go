package huaweicloud

import (
	"context"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

var _ kms.Importer = (*Provider)(nil)

// ImportParameters asks for an RSA 2048 wrapping key; expiration_time comes back in seconds.
func (p *Provider) ImportParameters(ctx context.Context, keyID string) (kms.ImportParameters, error) {
	body := &model.GetParametersForImportRequestBody{KeyId: keyID,
		WrappingAlgorithm: model.GetGetParametersForImportRequestBodyWrappingAlgorithmEnum().RSAES_OAEP_SHA_256}
	var resp *model.CreateParametersForImportResponse
	err := send(ctx, func() (err error) {
		resp, err = p.kms().CreateParametersForImport(&model.CreateParametersForImportRequest{Body: body})
		return err
	})
	if err != nil {
		return kms.ImportParameters{}, p.importError(ctx, err, "get import parameters for", keyID)
	}
	public, err := base64.StdEncoding.DecodeString(deref(resp.PublicKey))
	if err != nil {
		return kms.ImportParameters{}, fmt.Errorf("import parameters of key %s: public_key is not base64: %w", keyID, err)
	}
	var expires time.Time
	if resp.ExpirationTime != nil {
		expires = time.Unix(*resp.ExpirationTime, 0).UTC()
	}
	return kms.ImportParameters{PublicKey: public, ImportToken: deref(resp.ImportToken), ExpiresAt: expires}, nil
}

// ImportMaterial imports wrapped material; expiration_time goes in seconds.
func (p *Provider) ImportMaterial(ctx context.Context, keyID, importToken string, wrapped []byte, expiresAt time.Time) error {
	body := &model.ImportKeyMaterialRequestBody{KeyId: keyID, ImportToken: importToken,
		EncryptedKeyMaterial: base64.StdEncoding.EncodeToString(wrapped)}
	if !expiresAt.IsZero() {
		s := expiresAt.Unix()
		body.ExpirationTime = &s
	}
	if err := send(ctx, func() error {
		_, err := p.kms().ImportKeyMaterial(&model.ImportKeyMaterialRequest{Body: body})
		return err
	}); err != nil {
		return p.importError(ctx, err, "import material into", keyID)
	}
	return nil
}

// importError classifies import refusals; a 400 the table does not name is about the request's
// material or token, which only the user can fix.
func (p *Provider) importError(ctx context.Context, err error, call, keyID string) error {
	state := kms.State("")
	if k, oerr := p.Observe(ctx, keyID); oerr == nil {
		state = k.State
	}
	classified := classify(err, call, keyID, state)
	if rej, ok := classified.(*kms.RejectedError); ok && call == "import material into" && errorCode(err) != codeNotExternal {
		return &kms.ImportError{Code: kms.ImportMaterialInvalid, Reason: rej.Reason}
	}
	return classified
}
