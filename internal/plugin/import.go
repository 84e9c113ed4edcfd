package plugin

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

type importFlags struct {
	materialFile string
	expiresAt    string
	secretName   string
}

func (o *options) importCommand() *cobra.Command {
	f := &importFlags{}
	cmd := &cobra.Command{
		Use:   "import-material NAME --material-file FILE [--expires-at TIME]",
		Short: "Wrap key material locally with the key's import parameters and hand it to the operator",
		Long: `import-material reads status.importParameters of an External key, wraps the material in FILE
on this machine (RSAES_OAEP_SHA_256), stores only the wrapped material and the import token in a
Secret (NAME-key-material unless --secret-name), and points spec.keyMaterial at it. The plaintext
never leaves this machine.`,
		Example: `  openssl rand 32 > material.bin
  kubectl cmk import-material own-key --material-file material.bin --wait
  kubectl cmk import-material own-key --material-file material.bin --expires-at 2027-01-01T00:00:00Z`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.complete(); err != nil {
				return err
			}
			return o.importMaterial(cmd.Context(), args[0], f)
		},
	}
	cmd.Flags().StringVar(&f.materialFile, "material-file", "", "File with the plaintext key material (32 bytes for AES_256, 16 for SM4).")
	cmd.Flags().StringVar(&f.expiresAt, "expires-at", "", "When the imported material expires, RFC 3339 (symmetric keys only).")
	cmd.Flags().StringVar(&f.secretName, "secret-name", "", "The Secret for the wrapped material (default NAME-key-material).")
	cmd.Flags().BoolVar(&o.dryRun, "dry-run", false, "Send the Secret and the patch as a server-side dry run.")
	cmd.Flags().BoolVar(&o.wait, "wait", false, "Wait until the key has imported the material.")
	cmd.Flags().DurationVar(&o.timeout, "timeout", 5*time.Minute, "How long --wait waits.")
	_ = cmd.MarkFlagRequired("material-file")
	return cmd
}

func (o *options) importMaterial(ctx context.Context, name string, f *importFlags) error {
	key := keyIn(o.namespaceOrDefault(), name)
	c := &v1alpha1.CustomerMasterKey{}
	if err := o.client.Get(ctx, key, c); err != nil {
		return fmt.Errorf("%s: %s", key, notFound(err))
	}
	// Without --expires-at the material does not expire: an expiresAt left from an earlier
	// import is removed (null in a merge patch), or it would be refused as passed.
	keyMaterial := map[string]any{"expiresAt": nil}
	if f.expiresAt != "" {
		at, err := time.Parse(time.RFC3339, f.expiresAt)
		if err != nil {
			return fmt.Errorf("--expires-at %q is not an RFC 3339 time, e.g. 2027-01-01T00:00:00Z", f.expiresAt)
		}
		keyMaterial["expiresAt"] = at.UTC().Format(time.RFC3339)
	}
	wrapped, token, err := wrapMaterial(c, f.materialFile)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	secretName := f.secretName
	if secretName == "" {
		secretName = name + "-key-material"
	}
	if err := o.putMaterialSecret(ctx, c, secretName, wrapped, token); err != nil {
		return err
	}
	keyMaterial["secretRef"] = map[string]any{"name": secretName}
	raw, _ := json.Marshal(map[string]any{"spec": map[string]any{"keyMaterial": keyMaterial}})
	var opts []client.PatchOption
	if o.dryRun {
		opts = append(opts, client.DryRunAll)
	}
	if err := o.client.Patch(ctx, c, client.RawPatch(types.MergePatchType, raw), opts...); err != nil {
		return fmt.Errorf("%s: %s", key, refusal(err))
	}
	// The import leaves the key Enabled; the operator then disables it if the spec says so.
	want := v1alpha1.PhaseEnabled
	if !c.Spec.Enabled {
		want = v1alpha1.PhaseDisabled
	}
	r := result{key: key, from: c.Status.Phase, generation: c.Generation, outcome: requested, want: []v1alpha1.Phase{want}}
	switch {
	case o.dryRun:
		r.outcome = dryRun
	case o.wait:
		r.outcome = changed
		results := []result{r}
		o.waitFor(ctx, results)
		r = results[0]
	}
	o.printResults([]result{r})
	return failures([]result{r})
}

// wrapMaterial wraps the plaintext in file with the key's published public key. It refuses
// parameters that are missing or expired, since the KMS would refuse them.
func wrapMaterial(c *v1alpha1.CustomerMasterKey, file string) ([]byte, string, error) {
	p := c.Status.ImportParameters
	switch {
	case c.Spec.Origin != v1alpha1.OriginExternal:
		return nil, "", fmt.Errorf("the key has origin %s: only External keys take imported material", c.Spec.Origin)
	case p == nil:
		return nil, "", fmt.Errorf("no import parameters published (phase %s): material is imported only while a key is PendingImport", orDash(string(c.Status.Phase)))
	case !time.Now().Before(p.ExpiresAt.Time):
		return nil, "", fmt.Errorf("the import parameters expired at %s: the operator publishes fresh ones shortly; run this again then",
			p.ExpiresAt.UTC().Format(time.RFC3339))
	case p.WrappingAlgorithm != v1alpha1.WrappingAlgorithmRSAESOAEPSHA256:
		return nil, "", fmt.Errorf("wrapping algorithm %s is not supported", p.WrappingAlgorithm)
	}
	der, err := base64.StdEncoding.DecodeString(p.PublicKey)
	if err != nil {
		return nil, "", fmt.Errorf("status.importParameters.publicKey is not base64: %w", err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, "", fmt.Errorf("status.importParameters.publicKey: %w", err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, "", fmt.Errorf("status.importParameters.publicKey is not an RSA key")
	}
	material, err := os.ReadFile(file)
	if err != nil {
		return nil, "", fmt.Errorf("reading the material file: %w", err)
	}
	defer clear(material)
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPub, material, nil)
	if err != nil {
		return nil, "", fmt.Errorf("wrapping the material (%d bytes): %w", len(material), err)
	}
	return wrapped, p.ImportToken, nil
}

// putMaterialSecret creates or updates the Secret with the wrapped material and the token.
func (o *options) putMaterialSecret(ctx context.Context, c *v1alpha1.CustomerMasterKey, name string, wrapped []byte, token string) error {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.Namespace,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "kubectl-cmk"}},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{v1alpha1.SecretKeyEncryptedKeyMaterial: wrapped, v1alpha1.SecretKeyImportToken: []byte(token)},
	}
	var createOpts []client.CreateOption
	var updateOpts []client.UpdateOption
	if o.dryRun {
		createOpts, updateOpts = append(createOpts, client.DryRunAll), append(updateOpts, client.DryRunAll)
	}
	err := o.client.Create(ctx, s, createOpts...)
	if apierrors.IsAlreadyExists(err) {
		existing := &corev1.Secret{}
		if err = o.client.Get(ctx, client.ObjectKeyFromObject(s), existing); err == nil {
			existing.Data = s.Data
			err = o.client.Update(ctx, existing, updateOpts...)
		}
	}
	if err != nil {
		return fmt.Errorf("writing Secret %s/%s: %s", c.Namespace, name, refusal(err))
	}
	return nil
}

func keyIn(namespace, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: namespace, Name: name}
}
