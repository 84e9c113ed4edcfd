package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// These tests send bad input where a user sends it, to the apiserver, and check that the CRD's
// rules refuse it with a message that says what to do. No manager runs: the apiserver alone
// enforces them.

func unstructuredCMK(ns, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kms.cmk.io/v1alpha1",
		"kind":       "CustomerMasterKey",
		"metadata":   map[string]any{"name": name, "namespace": ns},
	}}
	if spec != nil {
		u.Object["spec"] = spec
	}
	return u
}

// checkRefusal checks that the apiserver refused with a message saying want, or accepted when
// want is empty.
func checkRefusal(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("refused valid input: %v", err)
	case want != "" && err == nil:
		t.Errorf("accepted bad input, want refusal %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("refusal %q does not say %q", err, want)
	}
}

func TestCreateRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	cases := map[string]struct {
		spec map[string]any
		want string // a fragment of the refusal; "" means accepted
	}{
		"Defaults":               {map[string]any{}, ""},
		"NoSpec":                 {nil, "spec: Required value"},
		"ScheduledWhileEnabled":  {map[string]any{"deletionScheduled": true}, `deletionScheduled: true requires enabled: false`},
		"ScheduledAndDisabled":   {map[string]any{"deletionScheduled": true, "enabled": false}, ""},
		"SymmetricSigning":       {map[string]any{"keySpec": "AES_256", "keyUsage": "SIGN_VERIFY"}, "symmetric keys (AES_256, SM4) only encrypt and decrypt"},
		"SM4Signing":             {map[string]any{"keySpec": "SM4", "keyUsage": "SIGN_VERIFY"}, "symmetric keys (AES_256, SM4) only encrypt and decrypt"},
		"ECEncrypting":           {map[string]any{"keySpec": "EC_P384"}, "EC_P256 and EC_P384 keys only sign and verify: set keyUsage: SIGN_VERIFY"},
		"RSASigning":             {map[string]any{"keySpec": "RSA_4096", "keyUsage": "SIGN_VERIFY"}, ""},
		"BadAlias":               {map[string]any{"alias": "my key!"}, "alias must be 1 to 255 letters, digits"},
		"EmptyAlias":             {map[string]any{"alias": ""}, "alias must be 1 to 255 letters, digits"},
		"LongAlias":              {map[string]any{"alias": strings.Repeat("a", 256)}, "spec.alias: Too long"},
		"DefaultAlias":           {map[string]any{"alias": "team/default"}, "aliases ending in /default are reserved"},
		"LongDescription":        {map[string]any{"description": strings.Repeat("d", 256)}, "spec.description: Too long: may not be more than 255"},
		"LongUnicodeDescription": {map[string]any{"description": strings.Repeat("密", 255)}, ""},
		"UnknownKeySpec":         {map[string]any{"keySpec": "AES_128"}, `Unsupported value: "AES_128"`},
		"UnknownOrigin":          {map[string]any{"origin": "BYOK"}, `Unsupported value: "BYOK"`},
		"UnknownPolicy":          {map[string]any{"deletionPolicy": "Orphan"}, `Unsupported value: "Orphan"`},
		"PendingDaysLow":         {map[string]any{"pendingDays": 6}, "should be greater than or equal to 7"},
		"PendingDaysHigh":        {map[string]any{"pendingDays": 1097}, "should be less than or equal to 1096"},
		"PendingDaysEdges":       {map[string]any{"pendingDays": 1096, "alias": "edge:ok/_-1"}, ""},
		"MaterialForKMSKey":      {map[string]any{"keyMaterial": map[string]any{"secretRef": map[string]any{"name": "m"}}}, "keyMaterial is only for keys with origin: External"},
		"MaterialExternal":       {map[string]any{"origin": "External", "keyMaterial": map[string]any{"secretRef": map[string]any{"name": "m"}, "expiresAt": "2030-01-01T00:00:00Z"}}, ""},
		"MaterialNoSecretName":   {map[string]any{"origin": "External", "keyMaterial": map[string]any{"secretRef": map[string]any{}}}, "spec.keyMaterial.secretRef.name: Required value"},
		"ExternalKeyPair":        {map[string]any{"origin": "External", "keySpec": "RSA_2048", "keyUsage": "SIGN_VERIFY"}, "origin: External (bring your own key) takes symmetric material only"},
		"ExternalSM4":            {map[string]any{"origin": "External", "keySpec": "SM4"}, ""},
		"ExpiryNotATime": {map[string]any{"origin": "External", "keyMaterial": map[string]any{
			"secretRef": map[string]any{"name": "m"}, "expiresAt": "tomorrow"}}, "spec.keyMaterial.expiresAt"},
		"RotationAES":         {map[string]any{"rotation": map[string]any{"enabled": true, "intervalDays": 30}}, ""},
		"RotationSM4":         {map[string]any{"keySpec": "SM4", "rotation": map[string]any{"enabled": true, "intervalDays": 365}}, ""},
		"RotationExternal":    {map[string]any{"origin": "External", "rotation": map[string]any{"enabled": true}}, "rotation.enabled is only for symmetric keys (AES_256, SM4) with origin: KMS"},
		"RotationKeyPair":     {map[string]any{"keySpec": "RSA_2048", "rotation": map[string]any{"enabled": true}}, "rotation.enabled is only for symmetric keys"},
		"RotationOffExternal": {map[string]any{"origin": "External", "rotation": map[string]any{"enabled": false}}, ""},
		"RotationTooOften":    {map[string]any{"rotation": map[string]any{"enabled": true, "intervalDays": 29}}, "should be greater than or equal to 30"},
		"RotationTooRare":     {map[string]any{"rotation": map[string]any{"enabled": true, "intervalDays": 366}}, "should be less than or equal to 365"},
		"Tags":                {map[string]any{"tags": map[string]any{"team": "payments", strings.Repeat("k", 36): strings.Repeat("v", 43), "empty": ""}}, ""},
		"TooManyTags":         {map[string]any{"tags": tagsOf(11)}, "must have at most 10 items"},
		"TenTags":             {map[string]any{"tags": tagsOf(10)}, ""},
		"LongTagKey":          {map[string]any{"tags": map[string]any{strings.Repeat("k", 37): "v"}}, "tag keys must be 1 to 36 characters"},
		"EmptyTagKey":         {map[string]any{"tags": map[string]any{"": "v"}}, "tag keys must be 1 to 36 characters"},
		"LongTagValue":        {map[string]any{"tags": map[string]any{"k": strings.Repeat("v", 44)}}, "may not be more than 43 bytes"},
		"ReservedTag":         {map[string]any{"tags": map[string]any{"kms.cmk.io/owner": "me"}}, "tag keys starting with kms.cmk.io/ or cmk-operator- are reserved"},
		"TagKeyStar":          {map[string]any{"tags": map[string]any{"a*b": "v"}}, "tag keys cannot hold control characters or any of * < > ="},
		"TagValueBackslash":   {map[string]any{"tags": map[string]any{"k": `a\b`}}, "tag values cannot hold control characters or any of * < > ="},
		"TagValueNewline":     {map[string]any{"tags": map[string]any{"k": "a\nb"}}, "tag values cannot hold control characters or any of * < > ="},
		"TagPunctuation":      {map[string]any{"tags": map[string]any{"team.a_b-c@d:e/f": "x y,z"}}, ""},
		"OwnerTag":            {map[string]any{"tags": map[string]any{"cmk-operator-owner-uid": "x"}}, "are reserved for the operator's own tags"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := env.Client.Create(context.Background(), unstructuredCMK(h.ns, strings.ToLower(name), tc.spec))
			checkRefusal(t, err, tc.want)
		})
	}

	// The CRD's defaults are those testenv.Key writes out in full for every test, as a Go
	// client must: it sends its zero values, which the apiserver does not default.
	got := h.get("defaults").Spec
	want := testenv.Key(h.ns, "defaults").Spec
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("defaults of spec: {}: -want, +got:\n%s", diff)
	}
}

func tagsOf(n int) map[string]any {
	tags := map[string]any{}
	for i := range n {
		tags[fmt.Sprintf("tag%d", i)] = "v"
	}
	return tags
}

func TestUpdateRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	base := map[string]any{"alias": "team/app", "description": "app key", "enabled": false, "deletionScheduled": true, "pendingDays": 10}
	cases := map[string]struct {
		patch map[string]any
		want  string
	}{
		"KeySpecImmutable":          {map[string]any{"keySpec": "RSA_2048"}, "keySpec is immutable"},
		"KeyUsageImmutable":         {map[string]any{"keyUsage": "SIGN_VERIFY"}, "keyUsage is immutable"},
		"OriginImmutable":           {map[string]any{"origin": "External"}, "origin is immutable"},
		"AliasImmutable":            {map[string]any{"alias": "team/other"}, "alias is immutable"},
		"AliasRemoved":              {map[string]any{"alias": nil}, "alias cannot be added or removed after creation"},
		"PendingDaysWhileScheduled": {map[string]any{"pendingDays": 30}, "pendingDays cannot change while deletionScheduled stays true"},
		"EnableWhileScheduled":      {map[string]any{"enabled": true}, "deletionScheduled: true requires enabled: false"},
		"CancelAndChangeDays":       {map[string]any{"deletionScheduled": false, "pendingDays": 30}, ""},
		"CancelAndEnable":           {map[string]any{"deletionScheduled": false, "enabled": true}, ""},
		"DescriptionMutable":        {map[string]any{"description": "still the app key"}, ""},
		"PolicyMutable":             {map[string]any{"deletionPolicy": "Delete"}, ""},
		"RotationMutable":           {map[string]any{"rotation": map[string]any{"enabled": true, "intervalDays": 90}}, ""},
		"TagsMutable":               {map[string]any{"tags": map[string]any{"team": "b"}}, ""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			obj := unstructuredCMK(h.ns, strings.ToLower(name), base)
			if err := env.Client.Create(context.Background(), obj); err != nil {
				t.Fatal(err)
			}
			raw := mustJSON(t, map[string]any{"spec": tc.patch})
			err := env.Client.Patch(context.Background(), obj, client.RawPatch("application/merge-patch+json", raw))
			checkRefusal(t, err, tc.want)
		})
	}

	// An alias cannot be added later either, since the key was created under the derived one.
	plain := unstructuredCMK(h.ns, "derived-alias", map[string]any{})
	if err := env.Client.Create(context.Background(), plain); err != nil {
		t.Fatal(err)
	}
	err := env.Client.Patch(context.Background(), plain, client.RawPatch("application/merge-patch+json", mustJSON(t, map[string]any{"spec": map[string]any{"alias": "late"}})))
	if err == nil || !strings.Contains(err.Error(), "alias cannot be added or removed") {
		t.Errorf("adding an alias after creation: %v", err)
	}
}
