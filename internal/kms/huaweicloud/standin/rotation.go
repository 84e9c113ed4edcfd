package standin

import (
	"crypto/rand"
	"net/http"
	"strconv"
	"time"
)

// rotation is a key's automatic rotation. Sources: the Huawei Cloud Go SDK (services/kms/v2:
// kms_meta.go for the paths, ShowKeyRotationStatusResponse and
// UpdateKeyRotationIntervalRequestBody for the fields), the KMS API reference (EnableKeyRotation
// and the error code table, whose Open Telekom Cloud copy lists every code used here), and
// the console guide ("About Key Rotation", "Enabling Key Rotation").
type rotation struct {
	enabled  bool
	interval int
	// since is when rotation was last turned on; the first rotation is an interval later.
	since, last time.Time
	count       int
}

// rotate serves the four rotation operations, POST /v1.0/{project_id}/kms/<op> with key_id in
// the body (SDK kms_meta.go).
func (s *Server) rotate(k *key, op string, req map[string]any) (any, *apiError) {
	if op == "get-key-rotation-status" {
		// Readable in any state: Huawei's Terraform provider reads it for disabled keys.
		// last_rotation_time is a string (SDK ShowKeyRotationStatusResponse); the reference's
		// example is in milliseconds.
		last := ""
		if !k.rotation.last.IsZero() {
			last = strconv.FormatInt(k.rotation.last.UnixMilli(), 10)
		}
		interval := k.rotation.interval
		if interval == 0 {
			interval = 365
		}
		return map[string]any{"key_rotation_enabled": k.rotation.enabled, "rotation_interval": interval,
			"last_rotation_time": last, "number_of_rotations": k.rotation.count}, nil
	}
	// Only symmetric keys the KMS made rotate (API reference, EnableKeyRotation: "CMKs created
	// using imported key materials ... do not support rotation"; error codes KMS.0312, KMS.0324,
	// KMS.0325).
	switch {
	case k.origin == "external":
		return nil, fail(http.StatusBadRequest, "KMS.0312", "External keys cannot be rotated.")
	case k.spec == "RSA_2048" || k.spec == "RSA_3072" || k.spec == "RSA_4096":
		return nil, fail(http.StatusBadRequest, "KMS.0324", "RSA keys cannot be rotated.")
	case k.spec != "AES_256" && k.spec != "SM4":
		return nil, fail(http.StatusBadRequest, "KMS.0325", "The asymmetric key is not support this operation.")
	}
	// The console guide makes an enabled key the condition for changing rotation; the API
	// reference names no answer for other states, so the stand-in refuses with the key-state
	// codes of the error table (KMS.0209 disabled, KMS.0210 pending deletion). Not confirmed.
	switch k.state {
	case "3":
		return nil, fail(http.StatusBadRequest, "KMS.0209", "The key has been disabled.")
	case "4":
		return nil, fail(http.StatusBadRequest, "KMS.0210", "The key is in Scheduled deletion state and cannot be used.")
	case "5":
		return nil, fail(http.StatusBadRequest, "KMS.0312", "External keys cannot be rotated.")
	}
	switch op {
	case "enable-key-rotation":
		// Already on: KMS.2901, as met live by Open Telekom Cloud's Terraform provider (PR 1823).
		if k.rotation.enabled {
			return nil, fail(http.StatusBadRequest, "KMS.2901", "The rotation state of key is not disabled.")
		}
		k.rotation.enabled, k.rotation.since = true, s.Clock.Now()
		if k.rotation.interval == 0 {
			k.rotation.interval = 365 // the default (EnableKeyRotation reference)
		}
	case "disable-key-rotation":
		if !k.rotation.enabled {
			return nil, fail(http.StatusBadRequest, "KMS.0313", "Key rotation is not enabled.")
		}
		k.rotation.enabled = false
	case "update-key-rotation-interval":
		if !k.rotation.enabled {
			return nil, fail(http.StatusBadRequest, "KMS.0313", "Key rotation is not enabled.")
		}
		days, _ := req["rotation_interval"].(float64)
		if days < 30 || days > 365 || days != float64(int(days)) {
			return nil, fail(http.StatusBadRequest, "KMS.3001", "Invalid rotation_interval.")
		}
		k.rotation.interval = int(days)
	}
	return map[string]any{}, nil
}

// rotateDue rotates a key whose interval has passed. The console guide: disabled keys and keys
// pending deletion are not rotated, and their rotation state is kept (restored after a
// canceled deletion).
func (s *Server) rotateDue(k *key, now time.Time) {
	r := &k.rotation
	if !r.enabled || k.state != "2" || r.interval <= 0 {
		return
	}
	from := r.since
	if r.last.After(from) {
		from = r.last
	}
	if now.Before(from.Add(time.Duration(r.interval) * 24 * time.Hour)) {
		return
	}
	k.material = make([]byte, 32)
	_, _ = rand.Read(k.material)
	r.last, r.count = now, r.count+1
}

// Rotation reports a key's rotation as the stand-in holds it, for tests.
func (s *Server) Rotation(id string) (enabled bool, interval, count int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[id]
	if !ok {
		return false, 0, 0
	}
	return k.rotation.enabled, k.rotation.interval, k.rotation.count
}

// DisableRotationInConsole turns a key's rotation off, as a person in the console would.
func (s *Server) DisableRotationInConsole(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.keys[id]; ok {
		k.rotation.enabled = false
	}
}
