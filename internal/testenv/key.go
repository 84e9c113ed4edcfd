package testenv

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// Key returns a CustomerMasterKey with every default the apiserver would set, as a Go client
// must send it (controllers' TestCreateRules holds it to the CRD's defaults), changed by each
// of opts in turn.
func Key(namespace, name string, opts ...func(*v1alpha1.CustomerMasterKey)) *v1alpha1.CustomerMasterKey {
	c := &v1alpha1.CustomerMasterKey{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: v1alpha1.CustomerMasterKeySpec{
			KeySpec: v1alpha1.KeySpecAES256, KeyUsage: v1alpha1.KeyUsageEncryptDecrypt, Origin: v1alpha1.OriginKMS,
			Enabled: true, PendingDays: 7, DeletionPolicy: v1alpha1.DeletionPolicyRetain,
			ManagementPolicy: v1alpha1.ManagementPolicyManage,
		},
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// External makes a Key one whose material its owner imports (origin EXTERNAL).
func External(c *v1alpha1.CustomerMasterKey) { c.Spec.Origin = v1alpha1.OriginExternal }

// Labels gives a Key these labels.
func Labels(labels map[string]string) func(*v1alpha1.CustomerMasterKey) {
	return func(c *v1alpha1.CustomerMasterKey) { c.Labels = labels }
}
