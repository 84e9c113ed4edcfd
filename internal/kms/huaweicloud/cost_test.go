package huaweicloud

import (
	"context"
	"testing"

	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/huaweicloud/standin"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
)

// cost is the KMS calls one transition takes as the reconciler makes it: the call, then the
// describe that reads the key back.
func cost(t testing.TB, p *Provider, s *standin.Server, id string, c kmstest.Call) (calls, describes int) {
	t.Helper()
	s.ResetCalls()
	if err := kmstest.Do(p, id, c); err != nil {
		t.Fatalf("%s: %v", c, err)
	}
	if _, err := p.Observe(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	for op, n := range s.Calls() {
		calls += n
		if op == "describe-key" {
			describes += n
		}
	}
	return calls, describes
}

// TestCallsPerTransition holds the budget: a transition is its call and one describe (the read
// back); a settled key costs one describe per resync.
func TestCallsPerTransition(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	k, err := p.Create(context.Background(), kms.CreateRequest{Alias: "k8s/hw/cost", KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "cost"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []kmstest.Call{kmstest.Disable, kmstest.Enable, kmstest.Disable, kmstest.Schedule, kmstest.Cancel} {
		if calls, describes := cost(t, p, s, k.ID, c); calls != 2 || describes != 1 {
			t.Errorf("%s: %d calls, %d describes; want the call and one describe", c, calls, describes)
		}
	}
	s.ResetCalls()
	if _, err := p.Observe(context.Background(), k.ID); err != nil {
		t.Fatal(err)
	}
	if n := s.Calls()["describe-key"]; n != 1 || len(s.Calls()) != 1 {
		t.Errorf("a settled key's resync: %v, want one describe", s.Calls())
	}
}

// BenchmarkProviderCalls reports KMS calls per transition and per settled key's resync, the
// floor being the call itself (1) and nothing (0): on an account's 20 requests/s, bulk work
// takes calls/transition ÷ 20 seconds per key.
func BenchmarkProviderCalls(b *testing.B) {
	p, s := newStandIn(b)
	k, err := p.Create(context.Background(), kms.CreateRequest{Alias: "k8s/hw/bench", KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	cycle := []kmstest.Call{kmstest.Disable, kmstest.Schedule, kmstest.Cancel, kmstest.Enable}
	var calls, describes, transitions int
	for i := 0; b.Loop(); i++ {
		c, d := cost(b, p, s, k.ID, cycle[i%len(cycle)])
		calls, describes, transitions = calls+c, describes+d, transitions+1
	}
	b.ReportMetric(float64(calls)/float64(transitions), "calls/transition")
	b.ReportMetric(float64(describes)/float64(transitions), "describes/transition")
	s.ResetCalls()
	if _, err := p.Observe(context.Background(), k.ID); err != nil {
		b.Fatal(err)
	}
	total := 0
	for _, n := range s.Calls() {
		total += n
	}
	b.ReportMetric(float64(total), "calls/resync")
}
