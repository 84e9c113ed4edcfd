package bench

import (
	"fmt"
	"path/filepath"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// The floor writes resources of its own kind, FloorKey, whose definition is the
// CustomerMasterKey CRD under another group and name: the same schema, the same CEL rules, the
// same status subresource, so each write costs the apiserver what the operator's does; and the
// manager, which watches CustomerMasterKeys, never sees them. So the floor and the operator can
// take turns, step by step, in one run on one apiserver.
var floorGroupVersion = schema.GroupVersion{Group: "bench.cmk.io", Version: v1alpha1.GroupVersion.Version}

// installFloorKind installs FloorKey, read from the CustomerMasterKey CRD of config/crd/bases.
func installFloorKind(cfg *rest.Config) error {
	opts := envtest.CRDInstallOptions{Paths: []string{filepath.Join("..", "..", "config", "crd", "bases")}}
	if err := envtest.ReadCRDFiles(&opts); err != nil {
		return err
	}
	var floorCRD *apiextensionsv1.CustomResourceDefinition
	for _, crd := range opts.CRDs {
		if crd.Spec.Group == v1alpha1.GroupVersion.Group && crd.Spec.Names.Kind == "CustomerMasterKey" {
			floorCRD = crd.DeepCopy()
		}
	}
	if floorCRD == nil {
		return fmt.Errorf("no CustomerMasterKey CRD in config/crd/bases")
	}
	floorCRD.ObjectMeta = metav1.ObjectMeta{Name: "floorkeys." + floorGroupVersion.Group}
	floorCRD.Spec.Group = floorGroupVersion.Group
	floorCRD.Spec.Names = apiextensionsv1.CustomResourceDefinitionNames{
		Plural: "floorkeys", Singular: "floorkey", Kind: "FloorKey", ListKind: "FloorKeyList"}
	_, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{CRDs: []*apiextensionsv1.CustomResourceDefinition{floorCRD}})
	return err
}

// floorScheme maps the CustomerMasterKey Go types to FloorKey, so the floor's clients write
// FloorKeys with the very objects the operator's resources are.
func floorScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	s.AddKnownTypeWithName(floorGroupVersion.WithKind("FloorKey"), &v1alpha1.CustomerMasterKey{})
	s.AddKnownTypeWithName(floorGroupVersion.WithKind("FloorKeyList"), &v1alpha1.CustomerMasterKeyList{})
	metav1.AddToGroupVersion(s, floorGroupVersion)
	return s, nil
}
