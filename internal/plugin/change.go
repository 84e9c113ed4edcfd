package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// outcome of a verb for one key.
type outcome string

const (
	changed   outcome = "changed"
	requested outcome = "requested"
	dryRun    outcome = "dry run"
	skipped   outcome = "skipped"
	failed    outcome = "failed"
)

// result is one row of the table.
type result struct {
	key        types.NamespacedName
	from, to   v1alpha1.Phase
	want       []v1alpha1.Phase
	generation int64
	outcome    outcome
	note       string
	// current is the key as the selection's list read it; nil for a key named, which is read
	// when it is changed.
	current *v1alpha1.CustomerMasterKey
}

// progressAbove is the selection size from which progress lines are printed.
const progressAbove = 50

// change applies a verb to the selected keys, optionally waits, and prints the table. It
// returns an error when any key failed.
func (o *options) change(ctx context.Context, v verb, f *verbFlags, names []string) error {
	results, err := o.selectKeys(ctx, names)
	if err != nil {
		return err
	}
	if len(results) == 0 {
		fmt.Fprintf(o.errOut, "No CustomerMasterKeys match %s.\n", o.describeSelection())
		return nil
	}
	progress := o.progress("patched", len(results))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(o.parallel, 1))
	for i := range results {
		g.Go(func() error {
			o.apply(gctx, v, f, &results[i])
			progress()
			return nil
		})
	}
	_ = g.Wait()
	if o.wait && !o.dryRun {
		o.waitFor(ctx, results)
	}
	o.printResults(results)
	return failures(results)
}

// selectKeys reads the keys named, or selected, as they are now. A name that does not exist
// is a failed row, so the table accounts for every name given.
func (o *options) selectKeys(ctx context.Context, names []string) ([]result, error) {
	if o.selector != "" {
		list, err := o.list(ctx)
		if err != nil {
			return nil, err
		}
		results := make([]result, 0, len(list.Items))
		for i := range list.Items {
			c := &list.Items[i]
			results = append(results, result{key: client.ObjectKeyFromObject(c), from: c.Status.Phase, current: c})
		}
		return results, nil
	}
	results := make([]result, 0, len(names))
	for _, name := range names {
		results = append(results, result{key: types.NamespacedName{Namespace: o.namespaceOrDefault(), Name: name}})
	}
	return results, nil
}

// list reads the selection a page at a time, as kubectl does, so that a namespace of thousands
// of keys is never one response the apiserver must build whole. The pages are one snapshot:
// the list's resourceVersion is the first page's, from which a watch may start.
func (o *options) list(ctx context.Context) (*v1alpha1.CustomerMasterKeyList, error) {
	if _, err := labels.Parse(o.selector); err != nil {
		return nil, fmt.Errorf("selector %q: %w", o.selector, err)
	}
	all := &v1alpha1.CustomerMasterKeyList{}
	next := ""
	for {
		page := &v1alpha1.CustomerMasterKeyList{}
		opts := append(o.scope(), client.Limit(pageSize))
		if next != "" {
			opts = append(opts, client.Continue(next))
		}
		if err := o.client.List(ctx, page, opts...); err != nil {
			return nil, fmt.Errorf("listing CustomerMasterKeys: %w", err)
		}
		if all.ResourceVersion == "" {
			all.ResourceVersion = page.ResourceVersion
		}
		all.Items = append(all.Items, page.Items...)
		if next = page.Continue; next == "" {
			return all, nil
		}
	}
}

// pageSize is kubectl's --chunk-size default; a variable for tests.
var pageSize int64 = 500

func (o *options) namespaceOrDefault() string {
	if o.namespace == "" {
		return "default"
	}
	return o.namespace
}

// apply asks the verb what to do with one key, as the selection's list read it (a key named is
// read now), and patches it. The patch carries the resourceVersion the choice was made on: a key
// changed since (another hand, or deleted and made again under its name) is read again and the
// verb asked again, so no choice rests on a state that is gone.
func (o *options) apply(ctx context.Context, v verb, f *verbFlags, r *result) {
	c := r.current
	for attempt := 0; ; attempt++ {
		if c == nil {
			c = &v1alpha1.CustomerMasterKey{}
			if err := o.client.Get(ctx, r.key, c); err != nil {
				r.outcome, r.note = failed, notFound(err)
				return
			}
		}
		err := o.patch(ctx, v, f, r, c)
		if !apierrors.IsConflict(err) || attempt == 2 {
			if err != nil {
				r.outcome, r.note = failed, refusal(err)
			}
			return
		}
		c = nil
	}
}

// patch sends the verb's patch for one key as read, and records the outcome; a refused patch
// is returned.
func (o *options) patch(ctx context.Context, v verb, f *verbFlags, r *result, c *v1alpha1.CustomerMasterKey) error {
	r.from = c.Status.Phase
	switch {
	case c.Status.Phase == v1alpha1.PhaseDeleted:
		r.outcome, r.note = skipped, "deleted: the key is gone for good"
		return nil
	case c.Spec.ManagementPolicy == v1alpha1.ManagementPolicyObserve && v.name != "import-material":
		r.outcome, r.note = skipped, "managementPolicy Observe: the operator changes nothing; set managementPolicy: Manage first"
		return nil
	}
	st := v.plan(c, f)
	if st.skip != "" {
		r.outcome, r.note = skipped, st.skip
		return nil
	}
	meta := map[string]any{"resourceVersion": c.ResourceVersion}
	if st.annotate != nil {
		meta["annotations"] = st.annotate
	}
	patch := map[string]any{"metadata": meta}
	for k, val := range st.patch {
		patch[k] = val
	}
	raw, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	var opts []client.PatchOption
	if o.dryRun {
		opts = append(opts, client.DryRunAll)
	}
	if err := o.client.Patch(ctx, c, client.RawPatch(types.MergePatchType, raw), opts...); err != nil {
		return err
	}
	r.want, r.generation = st.want, c.Generation
	switch {
	case o.dryRun:
		r.outcome = dryRun
	case o.wait:
		r.outcome = changed
	default:
		r.outcome = requested
	}
	return nil
}

// waitFor watches the selection until every patched key reports a wanted phase for the
// generation the patch made, or the timeout passes. One list, then a watch: a thousand keys
// cost the apiserver one stream, not a thousand polls.
func (o *options) waitFor(ctx context.Context, results []result) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	pending := map[types.NamespacedName]*result{}
	for i := range results {
		if results[i].outcome == changed {
			pending[results[i].key] = &results[i]
		}
	}
	progress := o.progress("done", len(pending))
	observe := func(c *v1alpha1.CustomerMasterKey) {
		r := pending[client.ObjectKeyFromObject(c)]
		if r == nil || c.Status.ObservedGeneration < r.generation || !slices.Contains(r.want, c.Status.Phase) {
			return
		}
		r.to = c.Status.Phase
		delete(pending, r.key)
		progress()
	}
	for len(pending) > 0 && ctx.Err() == nil {
		// (Re)start from a list whenever the watch ends, as the apiserver ends them now and then.
		list, err := o.list(ctx)
		if err != nil {
			pause(ctx)
			continue
		}
		for i := range list.Items {
			observe(&list.Items[i])
		}
		if len(pending) == 0 {
			break // all done by the time of the list: a watch would wait for nothing
		}
		w, err := o.client.Watch(ctx, &v1alpha1.CustomerMasterKeyList{},
			append(o.scope(), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})...)
		if err != nil {
			pause(ctx)
			continue
		}
		for ev := range w.ResultChan() {
			if c, ok := ev.Object.(*v1alpha1.CustomerMasterKey); ok {
				observe(c)
			}
			if len(pending) == 0 {
				break
			}
		}
		w.Stop()
	}
	for _, r := range pending {
		r.outcome, r.note = failed, fmt.Sprintf("timed out after %s waiting for %s", o.timeout, phases(r.want))
	}
}

// pause waits a moment before a failed list or watch is tried again.
func pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
}

// scope is the list options of the selection: its namespace, and its selector if any.
func (o *options) scope() []client.ListOption {
	opts := []client.ListOption{client.InNamespace(o.namespace)}
	if o.selector != "" {
		if sel, err := labels.Parse(o.selector); err == nil {
			opts = append(opts, client.MatchingLabelsSelector{Selector: sel})
		}
	}
	return opts
}

// progress returns a function to call once per key; on large selections it prints a line at
// every tenth.
func (o *options) progress(what string, total int) func() {
	if total <= progressAbove {
		return func() {}
	}
	// Called from the concurrent patches: the count and the line are written together.
	var mu sync.Mutex
	done := 0
	return func() {
		mu.Lock()
		defer mu.Unlock()
		done++
		if done%max(total/10, 1) == 0 || done == total {
			fmt.Fprintf(o.errOut, "%s %d of %d keys\n", what, done, total)
		}
	}
}

func (o *options) printResults(results []result) {
	slices.SortFunc(results, func(a, b result) int { return strings.Compare(a.key.String(), b.key.String()) })
	w := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KEY\tCHANGE")
	counts := map[outcome]int{}
	for _, r := range results {
		counts[r.outcome]++
		fmt.Fprintf(w, "%s\t%s\n", r.key, r.change())
	}
	_ = w.Flush()
	var parts []string
	for _, oc := range []outcome{changed, requested, dryRun, skipped, failed} {
		if counts[oc] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[oc], oc))
		}
	}
	fmt.Fprintln(o.out, strings.Join(parts, ", "))
}

func (r result) change() string {
	from := string(r.from)
	if from == "" {
		from = "(no phase yet)"
	}
	switch r.outcome {
	case changed:
		return fmt.Sprintf("%s → %s", from, r.to)
	case requested:
		return fmt.Sprintf("%s → %s (requested; --wait waits for it)", from, phases(r.want))
	case dryRun:
		return fmt.Sprintf("%s → %s (dry run: nothing changed)", from, phases(r.want))
	case skipped:
		return fmt.Sprintf("SKIPPED (%s): %s", from, r.note)
	}
	return "FAILED: " + r.note
}

func phases(ps []v1alpha1.Phase) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return strings.Join(s, " or ")
}

func failures(results []result) error {
	var names []string
	for _, r := range results {
		if r.outcome == failed {
			names = append(names, r.key.String())
		}
	}
	if len(names) == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d keys failed: %s", len(names), len(results), strings.Join(names, ", "))
}

func (o *options) describeSelection() string {
	where := "namespace " + o.namespaceOrDefault()
	if o.namespace == "" && o.allNamespaces {
		where = "any namespace"
	}
	return fmt.Sprintf("-l %s in %s", o.selector, where)
}

func notFound(err error) string {
	if apierrors.IsNotFound(err) {
		return "not found"
	}
	return err.Error()
}

// refusal keeps the apiserver's message, which for a CEL rule says what to do.
func refusal(err error) string {
	if status, ok := err.(apierrors.APIStatus); ok && status.Status().Message != "" {
		return status.Status().Message
	}
	return err.Error()
}
