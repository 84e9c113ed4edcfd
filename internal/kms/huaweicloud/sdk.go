// Package huaweicloud drives Huawei Cloud KMS (DEW) through its official Go SDK. Facts it
// honours are in docs/huaweicloud.md, each with its source: key_state codes and pending_days as
// a string (the SDK's KeyDetails and ScheduleKeyDeletionRequestBody models), key timestamps in
// milliseconds, import expiry in seconds (CreateParametersForImportResponse), and create with
// no idempotency token (CreateKeyRequestBody has none: a tag carrying the resource's UID finds
// a key made before a crash).
package huaweicloud

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	kmsv2 "github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Provider is Huawei Cloud KMS.
type Provider struct {
	clients *clients
	// claiming holds a mutex per key ID being claimed (see Claim).
	claiming sync.Map
	// enterpriseProject is the enterprise project new keys go in; empty for the default.
	enterpriseProject string
}

var _ kms.Provider = (*Provider)(nil)

// NewWithClient wraps an SDK client (see New for one built from configuration).
func NewWithClient(c *kmsv2.KmsClient) *Provider { return &Provider{clients: &clients{current: c}} }

// kms is the SDK client to call with: the one built from the credentials as they are now.
func (p *Provider) kms() *kmsv2.KmsClient { return p.clients.get() }

// enum sets an SDK enum field from its string value.
func enum[T any](value string, field **T) error {
	v := new(T)
	raw, _ := json.Marshal(value)
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("value %q: %w", value, err)
	}
	*field = v
	return nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func ptr[T any](v T) *T { return &v }

// send makes one SDK call, which takes no context, so that the caller's context still bounds
// it: the caller returns when ctx ends, and the call itself ends within the request timeout.
// A call cut short this way may still be carried out by the KMS, as one that timed out: every
// call is idempotent or, for a create, found again by its tag or its recorded attempt.
func send(ctx context.Context, call func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- call() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
