package controllers

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/keystatus"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// The keyMaterial Secret is read directly, one get per import attempt, so the operator needs
// no Secret watch or cache outside its own namespace.
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get

// DefaultImportRetry is how soon a refused import is tried again: the Secret it reads is not
// watched, so this is how a fixed Secret is noticed. Slow enough never to be a hot loop.
const DefaultImportRetry = 30 * time.Second

// refusedImport is an import the user must fix (a missing or malformed Secret, material the
// KMS refused): a keystatus.Blocked marked Import, so it is reported, never retried as a
// reconcile error, and tried again at the import retry.
func refusedImport(reason, message string) *keystatus.Blocked {
	return &keystatus.Blocked{Reason: reason, Message: message, Import: true}
}

// issueImportParameters publishes fresh parameters in status for the user to wrap material with.
func (r *CustomerMasterKeyReconciler) issueImportParameters(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	imp, err := r.importer()
	if err != nil {
		return err
	}
	params, err := imp.ImportParameters(ctx, cmk.Status.KeyID)
	if err != nil {
		return err
	}
	cmk.Status.ImportParameters = &v1alpha1.ImportParameters{
		WrappingAlgorithm: kms.WrappingAlgorithm,
		PublicKey:         base64.StdEncoding.EncodeToString(params.PublicKey),
		ImportToken:       params.ImportToken,
		ExpiresAt:         metav1.NewTime(params.ExpiresAt),
	}
	r.event(cmk, "Normal", v1alpha1.EventImportParameters, "GetImportParameters",
		"Published import parameters for key %s in status.importParameters", cmk.Status.KeyID)
	return nil
}

// importMaterial reads the Secret spec.keyMaterial names and imports its material. Refusals
// come back as a keystatus.Blocked with a message that says what to change. Import parameters
// are replaced here only when the KMS no longer accepts the published ones, or they are about
// to expire: a user wrapping material with them must not see them change at every retry.
func (r *CustomerMasterKeyReconciler) importMaterial(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	publishedRefused, err := r.tryImport(ctx, cmk)
	var refused *keystatus.Blocked
	if !errors.As(err, &refused) {
		return err
	}
	if publishedRefused || planner.ImportParametersDue(importParametersExpiry(cmk), r.Clock.Now()) {
		if err := r.issueImportParameters(ctx, cmk); err != nil {
			return err
		}
	}
	return refused
}

// tryImport imports the material; publishedRefused reports that the KMS refused the token
// published in status, so those parameters are no longer any use and new ones are due.
func (r *CustomerMasterKeyReconciler) tryImport(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (publishedRefused bool, err error) {
	imp, err := r.importer()
	if err != nil {
		return false, err
	}
	ref := cmk.Spec.KeyMaterial
	name := ref.SecretRef.Name
	var expiresAt time.Time
	if ref.ExpiresAt != nil {
		expiresAt = ref.ExpiresAt.Time
		if !expiresAt.After(r.Clock.Now()) {
			return false, refusedImport(v1alpha1.ReasonExpiryPassed,
				"spec.keyMaterial.expiresAt has passed: set a time in the future, or remove it for material that does not expire")
		}
	}
	wrapped, token, err := r.readMaterial(ctx, cmk, name)
	if err != nil {
		return false, err
	}

	err = imp.ImportMaterial(ctx, cmk.Status.KeyID, token, wrapped, expiresAt)
	if ie := kms.AsImportError(err); ie != nil {
		published := cmk.Status.ImportParameters
		return ie.Code == kms.ImportTokenInvalid && published != nil && published.ImportToken == token, importRefused(cmk, name, ie)
	}
	if err != nil {
		return false, err
	}
	r.event(cmk, "Normal", v1alpha1.EventMaterialImported, "ImportKeyMaterial",
		"Imported key material from Secret %s into key %s", name, cmk.Status.KeyID)
	return false, nil
}

// readMaterial reads the wrapped material and import token from the Secret spec.keyMaterial
// names. A Secret that does not exist and one without both keys get one answer: whoever may
// edit the resource but not read Secrets learns nothing about the namespace's Secrets from it.
func (r *CustomerMasterKeyReconciler) readMaterial(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, name string) ([]byte, string, error) {
	secret := &corev1.Secret{}
	err := r.apiReader().Get(ctx, client.ObjectKey{Namespace: cmk.Namespace, Name: name}, secret)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, "", fmt.Errorf("reading Secret %s: %w", name, err)
	}
	wrapped := secret.Data[v1alpha1.SecretKeyEncryptedKeyMaterial]
	token := strings.TrimSpace(string(secret.Data[v1alpha1.SecretKeyImportToken]))
	if len(wrapped) == 0 || token == "" {
		return nil, "", refusedImport(v1alpha1.ReasonSecretNotFound, fmt.Sprintf(
			"Secret %s in namespace %s was not found, or does not hold non-empty keys %s (the wrapped material) and %s: create it with both",
			name, cmk.Namespace, v1alpha1.SecretKeyEncryptedKeyMaterial, v1alpha1.SecretKeyImportToken))
	}
	return wrapped, token, nil
}

// importRefused turns the KMS's refusal into what the user must do. The token message is the
// same whether or not new parameters are published, so a user is warned once per mistake.
func importRefused(cmk *v1alpha1.CustomerMasterKey, secret string, ie *kms.ImportError) error {
	switch ie.Code {
	case kms.ImportTokenInvalid:
		return refusedImport(v1alpha1.ReasonImportTokenInvalid, fmt.Sprintf(
			"The KMS does not accept the import token in Secret %s (expired, superseded or another key's): wrap the material "+
				"again with the publicKey now in status.importParameters and put its importToken in the Secret", secret))
	case kms.ImportMaterialMismatch:
		return refusedImport(v1alpha1.ReasonMaterialMismatch, fmt.Sprintf(
			"The material in Secret %s was refused: %s. Wrap the key's original material with status.importParameters", secret, ie.Reason))
	default:
		return refusedImport(v1alpha1.ReasonMaterialInvalid, fmt.Sprintf(
			"The material in Secret %s was refused: %s. Wrap %s with status.importParameters.publicKey (%s)",
			secret, ie.Reason, materialSize(cmk.Spec.KeySpec), kms.WrappingAlgorithm))
	}
}

func importParametersExpiry(cmk *v1alpha1.CustomerMasterKey) time.Time {
	if p := cmk.Status.ImportParameters; p != nil {
		return p.ExpiresAt.Time
	}
	return time.Time{}
}

func materialSize(spec v1alpha1.KeySpec) string {
	if spec == v1alpha1.KeySpecSM4 {
		return "16 bytes of SM4 key material"
	}
	return "32 bytes of AES_256 key material"
}

func (r *CustomerMasterKeyReconciler) apiReader() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}

func (r *CustomerMasterKeyReconciler) importer() (kms.Importer, error) {
	imp, ok := kms.As[kms.Importer](r.KMS)
	if !ok {
		return nil, &kms.UnsupportedError{Reason: "the configured KMS provider does not take imported key material"}
	}
	return imp, nil
}
