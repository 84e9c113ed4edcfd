package plugin

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

func (o *options) usageCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "usage NAME",
		Short:   "List what depends on a key: the consumers the operator found (status.usage)",
		Example: `  kubectl cmk usage payments-db -n shop`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, names []string) error {
			if err := o.complete(); err != nil {
				return err
			}
			return o.usage(cmd.Context(), names[0])
		},
	}
}

func (o *options) usage(ctx context.Context, name string) error {
	c := v1alpha1.CustomerMasterKey{}
	if err := o.client.Get(ctx, keyIn(o.namespaceOrDefault(), name), &c); err != nil {
		return fmt.Errorf("%s/%s: %s", o.namespaceOrDefault(), name, notFound(err))
	}
	key := c.Status.KeyID
	if key == "" {
		key = "(none yet)"
	}
	u := c.Status.Usage
	if u == nil || u.Consumers == 0 {
		fmt.Fprintf(o.out, "%s/%s: nothing the operator sees depends on key %s.\n", c.Namespace, c.Name, key)
		fmt.Fprintln(o.out, "Applications that call the KMS with the key without declaring it (annotation "+v1alpha1.UsesKeyAnnotation+") are not seen.")
		return nil
	}
	fmt.Fprintf(o.out, "%s/%s: key %s is in use by %d consumer(s):\n", c.Namespace, c.Name, key, u.Consumers)
	for _, ref := range u.Refs {
		fmt.Fprintf(o.out, "  %s\n", ref)
	}
	if more := int(u.Consumers) - len(u.Refs); more > 0 {
		fmt.Fprintf(o.out, "  and %d more (status names the first %d)\n", more, len(u.Refs))
	}
	if c.Annotations[v1alpha1.AllowWhileInUseAnnotation] == "true" {
		fmt.Fprintln(o.out, v1alpha1.AllowWhileInUseAnnotation+"=true: the key may be disabled or deleted all the same.")
	} else {
		fmt.Fprintln(o.out, "Disabling it or scheduling its deletion is refused until they are gone, or the resource is annotated "+
			v1alpha1.AllowWhileInUseAnnotation+"=true.")
	}
	return nil
}
