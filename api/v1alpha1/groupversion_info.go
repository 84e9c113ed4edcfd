// Package v1alpha1 contains the CustomerMasterKey API of the kms.cmk.io group.
// +kubebuilder:object:generate=true
// +groupName=kms.cmk.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every type in this package.
	GroupVersion = schema.GroupVersion{Group: "kms.cmk.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a runtime.Scheme. It is
	// apimachinery's, not controller-runtime's deprecated helper, so that importing the API
	// needs no controller-runtime.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &CustomerMasterKey{}, &CustomerMasterKeyList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
