package gitops

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

var (
	healthLua   = filepath.Join("..", "..", "config", "argocd", "health.lua")
	argoCDCMap  = filepath.Join("..", "..", "config", "argocd", "argocd-cm.yaml")
	argoCDKey   = "resource.customizations.health.kms.cmk.io_CustomerMasterKey"
	argoHealths = []string{"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
)

// health is what an Argo CD health script returns.
type health struct{ Status, Message string }

func (h health) String() string { return h.Status + " (" + h.Message + ")" }

func script(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(healthLua)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// argoHealth runs a health script as Argo CD's util/lua runs a resource customization from
// argocd-cm: a state without the standard libraries but for package, base and table (Argo CD
// adds a safe os with time and date, which the script does not use), obj the resource as a
// Lua table, one second to run, and the returned table's status and message as the health; a
// status Argo CD does not know is Unknown.
func argoHealth(obj *unstructured.Unstructured, script string) (health, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), Protect: true}, lua.LString(lib.name)); err != nil {
			return health{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj.Object))
	if err := l.DoString(script); err != nil {
		return health{}, err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return health{}, fmt.Errorf("expect table output from Lua script, not %s", l.Get(-1).Type())
	}
	h := health{Status: lua.LVAsString(ret.RawGetString("status")), Message: lua.LVAsString(ret.RawGetString("message"))}
	for _, known := range argoHealths {
		if h.Status == known {
			return h, nil
		}
	}
	return health{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
}

// toLua turns an unstructured value into Lua as Argo CD does: numbers (int64 from the
// apiserver, float64, json.Number as a string), strings, booleans, arrays and maps.
func toLua(l *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case []any:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(toLua(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(v))
		for k, item := range v {
			tbl.RawSetH(lua.LString(k), toLua(l, item))
		}
		return tbl
	}
	return lua.LNil
}

// TestArgoCDConfigMapHoldsHealthLua: the argocd-cm snippet holds health.lua byte for byte,
// under the key Argo CD looks up for the kind, so the two never drift.
func TestArgoCDConfigMapHoldsHealthLua(t *testing.T) {
	raw, err := os.ReadFile(argoCDCMap)
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
	}
	if err := yaml.UnmarshalStrict(raw, &cm); err != nil {
		t.Fatal(err)
	}
	if cm.APIVersion != "v1" || cm.Kind != "ConfigMap" || cm.Metadata.Name != "argocd-cm" {
		t.Errorf("%s is %s %s %q, want the v1 ConfigMap argocd-cm", argoCDCMap, cm.APIVersion, cm.Kind, cm.Metadata.Name)
	}
	got, ok := cm.Data[argoCDKey]
	if !ok {
		t.Fatalf("%s has no data key %s: %v", argoCDCMap, argoCDKey, cm.Data)
	}
	if want := script(t); got != want {
		t.Errorf("%s %s differs from %s; indent the script four spaces under the key again:\n--- got\n%s\n--- want\n%s", argoCDCMap, argoCDKey, healthLua, got, want)
	}
}

// TestArgoCDHealthOfStatuses runs health.lua over statuses the operator writes, and ones of
// an older generation, without an apiserver: the rules of the contract one by one.
func TestArgoCDHealthOfStatuses(t *testing.T) {
	cond := func(typ, status, reason, msg string) map[string]any {
		return map[string]any{"type": typ, "status": status, "reason": reason, "message": msg, "observedGeneration": int64(2)}
	}
	obj := func(generation, observed int64, conds ...map[string]any) *unstructured.Unstructured {
		u := cmk("ns", "k", specEnabled)
		u.SetGeneration(generation)
		st := map[string]any{"observedGeneration": observed}
		if conds != nil {
			cs := []any{}
			for _, c := range conds {
				cs = append(cs, c)
			}
			st["conditions"] = cs
		}
		u.Object["status"] = st
		return u
	}
	ready := cond("Ready", "True", "Available", "The key is enabled")
	stalled := cond("Stalled", "True", "KeyNotFound", "The KMS has no key")
	notReady := cond("Ready", "False", "KeyNotFound", "The KMS has no key")
	reconciling := cond("Reconciling", "True", "Progressing", "Enabling the key")
	for _, c := range []struct {
		name string
		obj  *unstructured.Unstructured
		want health
	}{
		{"no status", cmk("ns", "k", specEnabled), health{"Progressing", "Waiting for the operator"}},
		{"defaulted status", obj(1, -1), health{"Progressing", "Waiting for the operator"}},
		{"ready", obj(2, 2, ready, cond("Synced", "True", "ReconcileSuccess", "ok")), health{"Healthy", "Available: The key is enabled"}},
		{"ready for an older generation", obj(3, 2, ready), health{"Progressing", "Waiting for the operator to observe generation 3"}},
		{"stalled", obj(2, 2, notReady, stalled), health{"Degraded", "KeyNotFound: The KMS has no key"}},
		{"stalled for an older generation", obj(3, 2, notReady, stalled), health{"Progressing", "Waiting for the operator to observe generation 3"}},
		{"reconciling", obj(2, 2, cond("Ready", "False", "Progressing", "Not yet"), reconciling), health{"Progressing", "Progressing: Enabling the key"}},
		{"reconciling an older generation", obj(3, 2, ready, reconciling), health{"Progressing", "Progressing: Enabling the key"}},
		{"not ready", obj(2, 2, cond("Ready", "False", "KeyDeleted", "The KMS deleted the key")), health{"Progressing", "KeyDeleted: The KMS deleted the key"}},
		{"no reason", obj(2, 2, map[string]any{"type": "Stalled", "status": "True"}), health{"Degraded", ""}},
	} {
		got, err := argoHealth(c.obj, script(t))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
		} else if got != c.want {
			t.Errorf("%s: health %v, want %v", c.name, got, c.want)
		}
	}
}

// TestArgoCDHealthOfKeys runs health.lua over real keys the operator reconciled, fetched as
// Argo CD sees them: each state that matters gets the health Argo CD should show.
func TestArgoCDHealthOfKeys(t *testing.T) {
	t.Parallel()
	ns := withOperator(t, "argocd")

	// Before any status write: a namespace no operator watches.
	idle := namespace(t, "argocd-idle")
	create(t, cmk(idle, "fresh", specEnabled))
	if got, err := argoHealth(get(t, idle, "fresh"), script(t)); err != nil || got != (health{"Progressing", "Waiting for the operator"}) {
		t.Errorf("a key before the operator's first status write: health %v (%v), want Progressing (Waiting for the operator)", got, err)
	}

	create(t,
		cmk(ns, "enabled", specEnabled),
		cmk(ns, "disabled", specDisabled),
		cmk(ns, "scheduled", specEnabled), // made enabled, then scheduled from Git below
		cmk(ns, "not-created", specScheduled),
		cmk(ns, "pending-import", specExternal),
		cmk(ns, "missing", specMissing),
	)
	settled := func(name string) health {
		var h health
		eventually(t, 30*time.Second, name+" settles", func() (bool, string) {
			var err error
			u := get(t, ns, name)
			h, err = argoHealth(u, script(t))
			if err != nil {
				t.Fatal(err)
			}
			return h.Status != "Progressing", h.String() + "; " + describe(u)
		})
		return h
	}
	settled("scheduled")
	setSpec(t, ns, "scheduled", specScheduled)

	for _, c := range []struct {
		name, status, reason string
	}{
		{"enabled", "Healthy", "Available"},
		{"disabled", "Healthy", "KeyDisabled"},
		{"scheduled", "Healthy", "PendingDeletion"},
		{"not-created", "Healthy", "NotCreated"},
		{"pending-import", "Healthy", "PendingImport"},
		{"missing", "Degraded", "KeyNotFound"},
	} {
		var got health
		eventually(t, 30*time.Second, c.name+" is "+c.status, func() (bool, string) {
			u := get(t, ns, c.name)
			var err error
			if got, err = argoHealth(u, script(t)); err != nil {
				t.Fatal(err)
			}
			return got.Status == c.status, got.String() + "; " + describe(u)
		})
		// The message is the reason and message of the condition the health comes from.
		u := get(t, ns, c.name)
		from := condition(u, "Ready")
		if c.status == "Degraded" {
			from = condition(u, "Stalled")
		}
		if from == nil || from["reason"] != c.reason {
			t.Errorf("%s: %s for condition %v, want reason %s", c.name, got, from, c.reason)
			continue
		}
		if want := fmt.Sprintf("%s: %s", from["reason"], from["message"]); got.Message != want {
			t.Errorf("%s: message %q, want %q", c.name, got.Message, want)
		}
		if c.name == "missing" && !strings.Contains(got.Message, missingKeyID) {
			t.Errorf("missing: message %q does not name the key %s", got.Message, missingKeyID)
		}
	}
}

// TestArgoCDSandbox: the runner opens what Argo CD opens for a script from argocd-cm and no
// more, so a health.lua that passes here does not lean on a library Argo CD lacks.
func TestArgoCDSandbox(t *testing.T) {
	got, err := argoHealth(cmk("ns", "k", specEnabled),
		`return { status = "Healthy", message = type(string) .. " " .. type(io) .. " " .. type(debug) .. " " .. type(table) .. " " .. type(ipairs) .. " " .. type(obj.spec) }`)
	if err != nil {
		t.Fatal(err)
	}
	if want := "nil nil nil table function table"; got.Message != want {
		t.Errorf("libraries %q, want %q", got.Message, want)
	}
}
