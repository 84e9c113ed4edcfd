// Package scheme is the runtime.Scheme the operator, its tests and kubectl-cmk share: the
// built-in Kubernetes types and the CustomerMasterKey API.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// Scheme knows the built-in types and the CustomerMasterKey API.
var Scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(Scheme))
	utilruntime.Must(v1alpha1.AddToScheme(Scheme))
}
