package huaweicloud

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"sync"
	"time"

	kmsv2 "github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2"
)

// DefaultCredentialsCheck is how often the credential files are looked at for a change.
const DefaultCredentialsCheck = 10 * time.Second

// clients holds the SDK client, built again when the mounted credential files change: the
// refusal of a wrong key says to fix the credentials Secret, and kubelet updates the mounted
// files in place, so the fix takes effect without a restart (and so do renewed security
// tokens). The transport, with the breaker, is shared by every client built.
type clients struct {
	mu      sync.Mutex
	current *kmsv2.KmsClient
	// build makes a client from the files in dir; nil when credentials do not come from files.
	build   func() (*kmsv2.KmsClient, error)
	dir     string
	every   time.Duration
	stamp   [sha256.Size]byte
	checked time.Time
}

func (c *clients) get() *kmsv2.KmsClient {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.build != nil && time.Since(c.checked) >= c.every {
		c.checked = time.Now()
		if stamp := stampOf(c.dir); stamp != c.stamp {
			if fresh, err := c.build(); err == nil {
				c.current, c.stamp = fresh, stamp
			}
		}
	}
	return c.current
}

// stampOf is a digest of the credential files' contents.
func stampOf(dir string) [sha256.Size]byte {
	h := sha256.New()
	for _, name := range []string{"access-key", "secret-key", "security-token"} {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		h.Write([]byte(name))
		h.Write(b)
		h.Write([]byte{0})
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}
