package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// aliasPrefix begins every derived alias; "k8s/<namespace>/" is reserved to the resources of
// that namespace.
const aliasPrefix = "k8s/"

// maxAlias is the longest alias the KMS takes (^[a-zA-Z0-9:/_-]{1,255}$, the CreateKey reference: docs/huaweicloud.md).
const maxAlias = 255

// Alias is the key's alias: spec.alias, or one derived from the resource's namespace and name.
func Alias(cmk *v1alpha1.CustomerMasterKey) string {
	if cmk.Spec.Alias != "" {
		return cmk.Spec.Alias
	}
	return derivedAlias(cmk.Namespace, cmk.Name)
}

// derivedAlias is "k8s/<namespace>/<name>" when that is an alias the KMS takes. A name with a
// '.' (which an alias cannot hold), one that would make the alias too long, and "default" (an
// alias ending in "/default" names one of the KMS's default keys) give instead the name, with
// '.' as '_' and cut to fit, then ':' and a digest of namespace and name. Names never hold ':',
// so such an alias never equals a plain one, nor one of another name.
func derivedAlias(namespace, name string) string {
	alias := aliasPrefix + namespace + "/" + name
	if len(alias) <= maxAlias && name != "default" && !strings.Contains(name, ".") {
		return alias
	}
	alias = strings.ReplaceAll(alias, ".", "_")
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	digest := ":" + hex.EncodeToString(sum[:])[:20]
	if keep := maxAlias - len(digest); len(alias) > keep {
		alias = alias[:keep]
	}
	return alias + digest
}

// reservedAlias refuses a spec.alias under the "k8s/<namespace>/" prefix of another namespace,
// where the derived aliases of that namespace's resources live (the admission policy in
// config/admission refuses it at the apiserver; this is for clusters without it). The whole of
// "k8s/" is reserved, in any letter case, so that no alias of one namespace passes for
// another's. Empty when the alias is allowed.
func reservedAlias(cmk *v1alpha1.CustomerMasterKey) string {
	alias := cmk.Spec.Alias
	own := aliasPrefix + cmk.Namespace + "/"
	if alias == "" || !strings.HasPrefix(strings.ToLower(alias), aliasPrefix) || strings.HasPrefix(alias, own) {
		return ""
	}
	return fmt.Sprintf("spec.alias %q is under %q, which is reserved to the resources of the namespace it names: "+
		"delete this resource and create it again with an alias outside %q, or one under %q (an alias cannot change)",
		alias, aliasPrefix, aliasPrefix, own)
}
