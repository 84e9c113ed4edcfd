package requestmetrics

import (
	"net/http"
	"net/url"
	"testing"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct{ method, url, verb, resource string }{
		{"GET", "/api/v1/namespaces/cmk-system/secrets/cmk-1", "get", "secrets"},
		{"GET", "/api/v1/namespaces/cmk-system/secrets?labelSelector=a%3Db&limit=500", "list", "secrets"},
		{"GET", "/api/v1/namespaces/cmk-system/secrets?watch=true&resourceVersion=5", "watch", "secrets"},
		{"PUT", "/api/v1/namespaces/cmk-system/secrets/cmk-1", "update", "secrets"},
		{"POST", "/api/v1/namespaces/cmk-system/secrets", "create", "secrets"},
		{"GET", "/api/v1/namespaces/team-a", "get", "namespaces"},
		{"GET", "/apis/kms.cmk.io/v1alpha1/customermasterkeys?limit=500", "list", "customermasterkeys"},
		{"PATCH", "/apis/kms.cmk.io/v1alpha1/namespaces/a/customermasterkeys/k/status", "patch", "customermasterkeys/status"},
		{"PATCH", "/apis/kms.cmk.io/v1alpha1/namespaces/a/customermasterkeys/k", "patch", "customermasterkeys"},
		{"POST", "/apis/events.k8s.io/v1/namespaces/a/events", "create", "events"},
		{"PUT", "/apis/coordination.k8s.io/v1/namespaces/cmk-system/leases/x", "update", "leases"},
		{"GET", "/version", "get", "other"},
		{"GET", "/apis/kms.cmk.io/v1alpha1", "get", "other"},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		verb, resource := Classify(&http.Request{Method: tc.method, URL: u})
		if verb != tc.verb || resource != tc.resource {
			t.Errorf("%s %s: %s %s, want %s %s", tc.method, tc.url, verb, resource, tc.verb, tc.resource)
		}
	}
}
