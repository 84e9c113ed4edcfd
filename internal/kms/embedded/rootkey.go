package embedded

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	// RootKeySecret is the Secret in the KMS namespace that holds the root key when no root
	// key file is given.
	RootKeySecret = "cmk-embedded-root-key"
	rootKeyField  = "root-key"
)

// loadRootKey reads the root key from file when one is named, else from the root key Secret,
// creating that Secret with a fresh random key on first start.
func loadRootKey(ctx context.Context, c client.Client, namespace, file string) ([]byte, error) {
	if file != "" {
		return readRootKeyFile(file)
	}
	key := client.ObjectKey{Namespace: namespace, Name: RootKeySecret}
	s := &corev1.Secret{}
	err := c.Get(ctx, key, s)
	if apierrors.IsNotFound(err) {
		root, rerr := randomBytes(rootKeySize)
		if rerr != nil {
			return nil, rerr
		}
		s = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: RootKeySecret, Namespace: namespace,
				Labels: map[string]string{labelManagedBy: managedByValue}},
			Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{rootKeyField: root},
		}
		err = c.Create(ctx, s)
		if err == nil {
			return root, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating root key secret %s/%s: %w", namespace, RootKeySecret, err)
		}
		// Another replica made it first; use theirs.
		err = c.Get(ctx, key, s)
	}
	if err != nil {
		return nil, fmt.Errorf("reading root key secret %s/%s: %w", namespace, RootKeySecret, err)
	}
	root := s.Data[rootKeyField]
	if len(root) != rootKeySize {
		return nil, fmt.Errorf("root key secret %s/%s: field %q must hold %d bytes", namespace, RootKeySecret, rootKeyField, rootKeySize)
	}
	return root, nil
}

// readRootKeyFile accepts the 32 key bytes as they are, or base64-encoded.
func readRootKeyFile(file string) ([]byte, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading root key file: %w", err)
	}
	if len(raw) == rootKeySize {
		return raw, nil
	}
	decoded, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(raw)))
	if err != nil || len(decoded) != rootKeySize {
		return nil, fmt.Errorf("root key file %s must hold %d bytes, raw or base64-encoded", file, rootKeySize)
	}
	return decoded, nil
}
