package ctl

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// nodeUpdateAttempts bounds the read-modify-write of a node spec: Aborted
// means the node changed between our read and our write (the operator
// raced another command, or the managers recorded a role change), and one
// reread settles that; a second conflict is worth reporting.
const nodeUpdateAttempts = 2

// updateNode rewrites the spec of node ref with change, which returns an
// error to refuse the change. It reports the node as stored and whether
// anything was written: an unchanged spec is not sent.
func updateNode(cmd *cobra.Command, client api.ControlClient, ref string, change func(n *api.Node, spec *api.NodeSpec) error) (*api.Node, bool, error) {
	ctx := cmd.Context()
	return rewrite(nodeUpdateAttempts, func() (*api.Node, *api.NodeSpec, error) {
		got, err := client.GetNode(ctx, &api.GetNodeRequest{Node: ref})
		if err != nil {
			return nil, nil, err
		}
		return got.GetNode(), completeSpec(got.GetNode()), nil
	}, change, func(n *api.Node, spec *api.NodeSpec) (*api.Node, error) {
		resp, err := client.UpdateNode(ctx, &api.UpdateNodeRequest{Node: n.GetId(), Version: n.GetMeta().GetVersion(), Spec: spec})
		return resp.GetNode(), err
	})
}

// completeSpec is n's spec with the fields it leaves unset filled in as
// they are in effect: the managers take a whole spec, and an unset field
// is not a choice to keep.
func completeSpec(n *api.Node) *api.NodeSpec {
	spec := proto.CloneOf(n.GetSpec())
	if spec == nil {
		spec = &api.NodeSpec{}
	}
	if spec.DesiredRole == api.NodeRole_NODE_ROLE_UNSPECIFIED {
		spec.DesiredRole = cmp.Or(n.GetRole(), api.NodeRole_NODE_ROLE_WORKER)
	}
	if spec.Availability == api.NodeAvailability_NODE_AVAILABILITY_UNSPECIFIED {
		spec.Availability = api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	}
	if len(spec.Labels) == 0 {
		spec.Labels = nil
	}
	return spec
}

// nodeUpdate is what `node update` changes; zero fields stay as they are.
type nodeUpdate struct {
	availability api.NodeAvailability
	labelAdd     map[string]string
	labelRm      []string
}

// availabilities are the words --availability takes.
var availabilities = map[string]api.NodeAvailability{
	"active": api.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
	"pause":  api.NodeAvailability_NODE_AVAILABILITY_PAUSE,
	"drain":  api.NodeAvailability_NODE_AVAILABILITY_DRAIN,
}

func parseNodeUpdate(fs interface{ Changed(string) bool }, availability string, labelAdd, labelRm []string) (nodeUpdate, error) {
	var u nodeUpdate
	if !fs.Changed("availability") && len(labelAdd) == 0 && len(labelRm) == 0 {
		return u, errors.New("nothing to update: give --availability, --label-add or --label-rm")
	}
	if fs.Changed("availability") {
		a, ok := availabilities[availability]
		if !ok {
			return u, fmt.Errorf("invalid --availability %q: want active, pause or drain", availability)
		}
		u.availability = a
	}
	add, err := parseLabels("--label-add", labelAdd)
	if err != nil {
		return u, err
	}
	u.labelAdd = add
	for _, key := range labelRm {
		if err := checkKey("--label-rm", "label", key); err != nil {
			return u, err
		}
		if _, ok := add[key]; ok {
			return u, fmt.Errorf("--label-add and --label-rm both name label %q", key)
		}
		u.labelRm = append(u.labelRm, key)
	}
	return u, nil
}

// apply changes spec; removing a label the node does not have is refused,
// as a typo there would otherwise pass silently.
func (u nodeUpdate) apply(n *api.Node, spec *api.NodeSpec) error {
	if u.availability != api.NodeAvailability_NODE_AVAILABILITY_UNSPECIFIED {
		spec.Availability = u.availability
	}
	for _, key := range u.labelRm {
		if _, ok := spec.GetLabels()[key]; !ok {
			return fmt.Errorf("node %s has no label %q", nodeName(n), key)
		}
	}
	spec.Labels = editLabels(spec.Labels, u.labelAdd, u.labelRm)
	return nil
}

// nodeName is how messages name a node: its hostname, else its id.
func nodeName(n *api.Node) string {
	if h := n.GetDescription().GetHostname(); h != "" {
		return h
	}
	return n.GetId()
}

func newNodeUpdateCommand(c *cli) *cobra.Command {
	var (
		availability      string
		labelAdd, labelRm []string
	)
	cmd := &cobra.Command{
		Use:   "update [flags] NODE",
		Short: "Change a node's availability or labels",
		Long: `Change the availability or the labels of a node (by hostname, ID or unique ID
prefix) and print the NODE argument.

--availability steers the scheduler: active takes new tasks, pause keeps the
node's tasks but places no new ones, drain moves its tasks to other nodes.
Labels are matched by placement constraints (node.labels.KEY==VALUE).`,
		Example: `  shoalctl node update --availability drain host2
  shoalctl node update --label-add zone=eu --label-rm rack host3`,
		Args: exactArgs(1, "exactly one NODE argument"),
	}
	fs := cmd.Flags()
	fs.StringVar(&availability, "availability", "", "active, pause or drain")
	fs.StringArrayVar(&labelAdd, "label-add", nil, "add or change a label KEY=VALUE (repeatable)")
	fs.StringArrayVar(&labelRm, "label-rm", nil, "remove the label KEY (repeatable)")
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		u, err := parseNodeUpdate(cmd.Flags(), availability, labelAdd, labelRm)
		if err != nil {
			return usageError{cmd: cmd, err: err}
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		if _, _, err := updateNode(cmd, client, args[0], u.apply); err != nil {
			return argError(args[0], err)
		}
		fmt.Fprintln(cmd.OutOrStdout(), args[0])
		return nil
	})
	return cmd
}

// newNodeRoleCommand is `node promote` (role manager) or `node demote`
// (role worker).
func newNodeRoleCommand(c *cli, use string, role api.NodeRole) *cobra.Command {
	word := roleWord(role)
	verb := map[string]string{"promote": "Promote", "demote": "Demote"}[use]
	long := `Make nodes (by hostname, ID or unique ID prefix) managers: each joins the raft
group as a voter and gets a manager certificate. Keep an odd number of
managers: 3 survive the loss of one, 5 the loss of two.`
	if role == api.NodeRole_NODE_ROLE_WORKER {
		long = `Make managers (by hostname, ID or unique ID prefix) plain workers: each leaves
the raft group and gets a worker certificate. A demotion that would leave
the remaining managers without a quorum is refused.`
	}
	cmd := &cobra.Command{
		Use:   use + " NODE...",
		Short: verb + " nodes to " + word + "s",
		Long: long + `

Every argument is tried; the command fails if any could not be changed.`,
		Args: minArgs(1, "at least one NODE argument"),
	}
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		return eachArg(args, func(name string) error {
			_, changed, err := updateNode(cmd, client, name, func(_ *api.Node, spec *api.NodeSpec) error {
				spec.DesiredRole = role
				return nil
			})
			switch {
			case err != nil:
				return err
			case changed:
				fmt.Fprintf(out, "node %s is now a %s\n", name, word)
			default:
				fmt.Fprintf(out, "node %s is already a %s\n", name, word)
			}
			return nil
		})
	})
	return cmd
}

// roleWord is a role as commands say it: "manager", "worker".
func roleWord(r api.NodeRole) string {
	return strings.ToLower(enumWord(r.String(), "NODE_ROLE_"))
}

func newNodeRmCommand(c *cli) *cobra.Command {
	var force bool
	cmd := rmCommand(c, &cobra.Command{
		Use:     "rm [flags] NODE...",
		Aliases: []string{"remove"},
		Short:   "Remove nodes from the cluster",
		Long: `Remove nodes (by hostname, ID or unique ID prefix) from the cluster and print
each removed node's argument. Their certificates are refused from then on;
to come back, a node must join again with a token.

A node that is not down is removed only with --force (its shoald keeps
running but is cut off). A manager must be demoted first.
Every argument is tried; the command fails if any could not be removed.`,
		Args: minArgs(1, "at least one NODE argument"),
	}, func(ctx context.Context, client api.ControlClient, name string) error {
		_, err := client.RemoveNode(ctx, &api.RemoveNodeRequest{Node: name, Force: force})
		return err
	})
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove nodes that are not down")
	return cmd
}

func newNodePsCommand(c *cli) *cobra.Command {
	return psCommand(c, &cobra.Command{
		Use:   "ps [flags] [NODE...]",
		Short: "List the tasks on nodes",
		Long: `List the tasks assigned to nodes (by hostname, ID or unique ID prefix), by
default to the node whose shoald answers. The table is that of
` + "`service ps`" + `: per service and slot, the newest task first and its
predecessors on the same nodes below it (\_).

--format TEMPLATE runs a Go template per task with the fields
.ID .Name .Image .Node .DesiredState .CurrentState .Error
and the functions json, join, lower and upper.`,
		Example: `  shoalctl node ps
  shoalctl node ps --filter desired-state=running host2 host3`,
		Args: cobra.ArbitraryArgs,
	}, func(cmd *cobra.Command, args []string, self string) ([]string, error) {
		if len(args) > 0 {
			return slices.Compact(args), nil
		}
		if self == "" {
			return nil, usageError{cmd: cmd, err: fmt.Errorf("name a NODE: shoald at %s did not say which node it runs on", c.dialed)}
		}
		return []string{self}, nil
	}, func(name string) *api.ListTasksRequest {
		return &api.ListTasksRequest{Node: name}
	})
}

// exactArgs is cobra.ExactArgs with a message that says what is expected.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{cmd: cmd, err: fmt.Errorf("%q requires %s, got %d", cmd.CommandPath(), what, len(args))}
		}
		return nil
	}
}
