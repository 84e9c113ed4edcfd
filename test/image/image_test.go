// Package image checks the manager image that `make image` builds without a container engine
// (hack/build-image.sh): a docker-archive that `ctr images import`, `docker load`, `podman load`
// and `kind load image-archive` take.
package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
)

// TestImage builds the image twice and reads it as an image loader would: the manifest names
// the config and the layer by their digests, the config runs /manager as 65532:65532, the
// layer holds a static manager and a CA bundle for HTTPS to a cloud KMS, and the same sources
// give the same bytes.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "first.tar"), filepath.Join(dir, "second.tar")
	for _, out := range []string{first, second} {
		cmd := exec.Command(filepath.Join("..", "..", "hack", "build-image.sh"), out, "cmk-operator:test")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build-image.sh: %v\n%s", err, b)
		}
	}
	archive := files(t, read(t, first))
	if !bytes.Equal(read(t, first), read(t, second)) {
		t.Error("two builds of the same sources differ")
	}

	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(archive["manifest.json"].data, &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("manifest.json: %v, %d images", err, len(manifest))
	}
	m := manifest[0]
	if !slices.Equal(m.RepoTags, []string{"cmk-operator:test"}) || len(m.Layers) != 1 {
		t.Fatalf("manifest %+v: want the tag given and one layer", m)
	}
	rawConfig, rawLayer := archive[m.Config].data, archive[m.Layers[0]].data
	if m.Config != digest(rawConfig)+".json" || filepath.Dir(m.Layers[0]) != digest(rawLayer) {
		t.Errorf("the manifest names config %s and layer %s, not by their digests", m.Config, m.Layers[0])
	}

	var config struct {
		Architecture, OS string
		Config           struct {
			User       string
			Entrypoint []string
		}
		RootFS struct {
			Type    string
			DiffIDs []string `json:"diff_ids"`
		}
	}
	if err := json.Unmarshal(rawConfig, &config); err != nil {
		t.Fatal(err)
	}
	if config.OS != "linux" || config.Architecture != runtime.GOARCH || config.Config.User != "65532:65532" ||
		!slices.Equal(config.Config.Entrypoint, []string{"/manager"}) {
		t.Errorf("config %+v: want linux/%s, /manager run by 65532:65532", config, runtime.GOARCH)
	}
	if config.RootFS.Type != "layers" || !slices.Equal(config.RootFS.DiffIDs, []string{"sha256:" + digest(rawLayer)}) {
		t.Errorf("rootfs %+v does not name the layer's digest", config.RootFS)
	}

	layer := files(t, rawLayer)
	manager := layer["manager"]
	if manager.header == nil || manager.header.Mode != 0o755 || manager.header.Uid != 0 {
		t.Fatalf("manager: %+v, want an executable owned by root that 65532 may run", manager.header)
	}
	bin, err := elf.NewFile(bytes.NewReader(manager.data))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range bin.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the manager is dynamically linked: a FROM-scratch image has no loader")
		}
	}
	if ca := layer["etc/ssl/certs/ca-certificates.crt"]; ca.header == nil || !bytes.Contains(ca.data, []byte("BEGIN CERTIFICATE")) {
		t.Error("no CA bundle at /etc/ssl/certs/ca-certificates.crt: HTTPS to a cloud KMS would fail")
	}
	if passwd := layer["etc/passwd"]; !bytes.Contains(passwd.data, []byte(":65532:65532:")) {
		t.Error("/etc/passwd has no entry for 65532")
	}
}

type file struct {
	header *tar.Header
	data   []byte
}

// files reads a tar archive by name.
func files(t *testing.T, archive []byte) map[string]file {
	t.Helper()
	out := map[string]file{}
	r := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Clean(h.Name)] = file{header: h, data: data}
	}
}

// TestPauseImage builds make e2e's sandbox image from ./hack/pause, as its own user: the
// package's name is the entrypoint.
func TestPauseImage(t *testing.T) {
	out := filepath.Join(t.TempDir(), "pause.tar")
	cmd := exec.Command(filepath.Join("..", "..", "hack", "build-image.sh"), out, "cmk-e2e/pause:test", "./hack/pause", "65535:65535")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-image.sh: %v\n%s", err, b)
	}
	archive := files(t, read(t, out))
	var manifest []struct{ Config string }
	if err := json.Unmarshal(archive["manifest.json"].data, &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("manifest.json: %v", err)
	}
	var config struct {
		Config struct {
			User       string
			Entrypoint []string
		}
	}
	if err := json.Unmarshal(archive[manifest[0].Config].data, &config); err != nil {
		t.Fatal(err)
	}
	if config.Config.User != "65535:65535" || !slices.Equal(config.Config.Entrypoint, []string{"/pause"}) {
		t.Errorf("pause image config %+v, want /pause run by 65535:65535", config.Config)
	}
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
