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
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

const (
	// RootKeySecret is the Secret in the KMS namespace that holds the root key when no root
	// key file is given.
	RootKeySecret = "cmk-embedded-root-key"
	rootKeyField  = "root-key"
)

// loadRootKey reads the root key from file when one is named, else from the root key Secret.
// It makes a new root key only for a KMS that holds no live key: a root key made while keys
// sealed under a lost one still exist would leave them all unusable without a word.
func loadRootKey(ctx context.Context, c client.Client, namespace, file string) ([]byte, error) {
	if file != "" {
		return readRootKeyFile(file)
	}
	key := client.ObjectKey{Namespace: namespace, Name: RootKeySecret}
	s := &corev1.Secret{}
	err := c.Get(ctx, key, s)
	if apierrors.IsNotFound(err) {
		if err := refuseIfKeysExist(ctx, c, namespace); err != nil {
			return nil, err
		}
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

// refuseIfKeysExist fails when the KMS namespace holds keys that are not deleted: their
// material is sealed under a root key that is gone.
func refuseIfKeysExist(ctx context.Context, c client.Client, namespace string) error {
	var list corev1.SecretList
	if err := c.List(ctx, &list, client.InNamespace(namespace), client.MatchingLabelsSelector{Selector: liveKeys()}, client.Limit(1)); err != nil {
		return fmt.Errorf("looking for keys before making a root key: %w", err)
	}
	if len(list.Items) == 0 {
		return nil
	}
	return fmt.Errorf("the root key Secret %[1]s/%[2]s is missing, but the embedded KMS holds keys sealed under the root key "+
		"with check value %[3]s (key Secret %[4]s and maybe more): restore it from your backup "+
		"(kubectl -n %[1]s create secret generic %[2]s --from-file=root-key=<backup file>), or start with "+
		"--embedded-root-key-file; a new root key would leave every key unusable, so none is made (docs/embedded.md: \"Back up the root key\")",
		namespace, RootKeySecret, checkOf(&list.Items[0]), list.Items[0].Name)
}

// verifyRootKey fails when any live key is sealed under another root key than this one. Keys
// from before check values were recorded are tried by opening their sealed fields, and get the
// check value recorded once they open.
func (p *Provider) verifyRootKey(ctx context.Context) error {
	sel := liveKeys().Add(requirement(labelRootKeyCheck, selection.NotEquals, p.sealer.check()))
	opts := []client.ListOption{client.InNamespace(p.namespace), client.MatchingLabelsSelector{Selector: sel}, client.Limit(500)}
	for {
		var list corev1.SecretList
		if err := p.client.List(ctx, &list, opts...); err != nil {
			return fmt.Errorf("checking the root key against the keys: %w", err)
		}
		for i := range list.Items {
			if err := p.verifySealedUnder(ctx, &list.Items[i]); err != nil {
				return err
			}
		}
		if list.Continue == "" {
			return nil
		}
		opts = append(opts, client.Continue(list.Continue))
	}
}

func (p *Provider) verifySealedUnder(ctx context.Context, s *corev1.Secret) error {
	wrong := fmt.Errorf("the root key given (check value %s) is not the one key Secret %s/%s is sealed under (check value %s): "+
		"restore the original root key from your backup into Secret %s/%s, or pass it with --embedded-root-key-file; "+
		"nothing is started with a root key that cannot open the keys (docs/embedded.md: \"Back up the root key\")",
		p.sealer.check(), s.Namespace, s.Name, checkOf(s), p.namespace, RootKeySecret)
	if _, recorded := s.Labels[labelRootKeyCheck]; recorded {
		return wrong
	}
	r, err := readRecord(s)
	if err != nil {
		return nil // Reported on the key itself, when it is used.
	}
	if sealed, ok := s.Data[materialField]; ok {
		if _, err := p.sealer.open(materialAAD(r.ID, r.version()), sealed); err != nil {
			return wrong
		}
	}
	if sealed, ok := s.Data[wrappingKeyField]; ok {
		if _, err := p.sealer.open(wrappingKeyID(r.ID), sealed); err != nil {
			return wrong
		}
	}
	return p.transition(ctx, r.ID, "record the root key of", func(*record) (bool, error) { return true, nil })
}

// liveKeys selects the Secrets of keys that are not deleted: the ones whose material a root key
// must open.
func liveKeys() labels.Selector {
	return labels.NewSelector().
		Add(requirement(labelKey, selection.Equals, "true")).
		Add(requirement(labelState, selection.NotEquals, string(kms.StateDeleted)))
}

func requirement(key string, op selection.Operator, value string) labels.Requirement {
	r, err := labels.NewRequirement(key, op, []string{value})
	if err != nil {
		panic(err) // Only constant keys and hex values come here.
	}
	return *r
}

// checkOf is the check value of the root key a key Secret says it is sealed under.
func checkOf(s *corev1.Secret) string {
	if c := s.Labels[labelRootKeyCheck]; c != "" {
		return c
	}
	return "not recorded"
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
