// Package requestmetrics counts the manager's requests to the Kubernetes apiserver by verb and
// resource, on the manager's metrics endpoint, so the cost of the operator per key can be read
// off a running manager (and is, by `make bench`). client-go's own rest_client_requests_total
// has only the HTTP method, which cannot tell a get from a list or a watch.
package requestmetrics

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Requests is the counter: cmk_apiserver_requests_total{verb, resource}.
var Requests = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "cmk_apiserver_requests_total",
	Help: "Requests the manager sent to the Kubernetes apiserver, by verb (get, list, watch, create, update, patch, delete) and resource (with its subresource, as in customermasterkeys/status).",
}, []string{"verb", "resource"})

func init() { metrics.Registry.MustRegister(Requests) }

// Count makes every client built from cfg count its requests.
func Count(cfg *rest.Config) {
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return counting{rt} })
}

type counting struct{ next http.RoundTripper }

func (c counting) RoundTrip(req *http.Request) (*http.Response, error) {
	verb, resource := Classify(req)
	Requests.WithLabelValues(verb, resource).Inc()
	return c.next.RoundTrip(req)
}

// Classify names a request's verb and resource the way the apiserver's audit log and RBAC do,
// from its method and path: /api/v1/namespaces/NS/RESOURCE/NAME/SUBRESOURCE, or
// /apis/GROUP/VERSION/... . A path that is no resource (discovery, /version) is "other".
func Classify(req *http.Request) (verb, resource string) {
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		parts = parts[3:]
	default:
		return strings.ToLower(req.Method), "other"
	}
	if len(parts) >= 2 && parts[0] == "namespaces" && len(parts) != 2 {
		parts = parts[2:] // a namespaced resource; "namespaces/NS" alone is the namespace itself
	}
	resource, named := parts[0], len(parts) >= 2
	if len(parts) >= 3 {
		resource += "/" + parts[2]
	}
	switch req.Method {
	case http.MethodGet:
		switch {
		case named:
			verb = "get"
		case req.URL.Query().Get("watch") == "true" || req.URL.Query().Get("watch") == "1":
			verb = "watch"
		default:
			verb = "list"
		}
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
	case http.MethodDelete:
		verb = "delete"
	default:
		verb = strings.ToLower(req.Method)
	}
	return verb, resource
}
