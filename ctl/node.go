package ctl

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// NodeIDHeader is the gRPC response header in which shoald may name the
// node it runs on; `node ls` then marks that node with "*" as Docker marks
// the node the CLI is talking to. Without it no node is marked.
const NodeIDHeader = "shoal-node-id"

func newNodeCommand(c *cli) *cobra.Command {
	return groupCommand("node", "Manage nodes",
		newNodeLsCommand(c),
		newNodeInspectCommand(c),
		newNodePsCommand(c),
		newNodeUpdateCommand(c),
		newNodeRoleCommand(c, "promote", api.NodeRole_NODE_ROLE_MANAGER),
		newNodeRoleCommand(c, "demote", api.NodeRole_NODE_ROLE_WORKER),
		newNodeRmCommand(c),
	)
}

// nodeRow is a line of `node ls`, and what its --format templates see.
type nodeRow struct {
	ID            string
	Self          bool // the node whose shoald answered
	Hostname      string
	Status        string
	Availability  string
	ManagerStatus string
	EngineVersion string
}

func newNodeLsCommand(c *cli) *cobra.Command {
	return listCommand(c, &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List nodes",
		Long: `List the nodes of the cluster, sorted by hostname. "*" marks the node whose
shoald answered.

--format TEMPLATE runs a Go template per node with the fields
.ID .Self .Hostname .Status .Availability .ManagerStatus .EngineVersion
and the functions json, join, lower and upper.`,
		Args: noArgs,
	}, func(ctx context.Context, client api.ControlClient, p *listPrinter) (listing[nodeRow], error) {
		var header metadata.MD
		resp, err := client.ListNodes(ctx, &api.ListNodesRequest{}, grpc.Header(&header))
		if err != nil {
			return listing[nodeRow]{}, err
		}
		return nodeListing(p, resp.GetNodes(), selfNode(header)), nil
	})
}

// selfNode is the node whose shoald answered, from its NodeIDHeader; "" if
// it did not say.
func selfNode(header metadata.MD) string {
	if v := header.Get(NodeIDHeader); len(v) > 0 {
		return v[0]
	}
	return ""
}

func nodeListing(p *listPrinter, nodes []*api.Node, self string) listing[nodeRow] {
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b *api.Node) int {
		return cmp.Or(strings.Compare(a.GetDescription().GetHostname(), b.GetDescription().GetHostname()),
			strings.Compare(a.GetId(), b.GetId()))
	})
	l := listing[nodeRow]{
		columns: []column[nodeRow]{
			{"ID", func(r nodeRow) string {
				if r.Self {
					return r.ID + " *"
				}
				return r.ID
			}},
			{"HOSTNAME", func(r nodeRow) string { return r.Hostname }},
			{"STATUS", func(r nodeRow) string { return r.Status }},
			{"AVAILABILITY", func(r nodeRow) string { return r.Availability }},
			{"MANAGER STATUS", func(r nodeRow) string { return r.ManagerStatus }},
			{"ENGINE VERSION", func(r nodeRow) string { return r.EngineVersion }},
		},
		id: func(r nodeRow) string { return r.ID },
	}
	for _, n := range nodes {
		l.rows = append(l.rows, nodeRow{
			ID:            p.shortID(n.GetId()),
			Self:          self != "" && n.GetId() == self,
			Hostname:      n.GetDescription().GetHostname(),
			Status:        title(enumWord(n.GetStatus().GetState().String(), "NODE_STATE_")),
			Availability:  title(enumWord(n.GetSpec().GetAvailability().String(), "NODE_AVAILABILITY_")),
			ManagerStatus: managerStatus(n),
			EngineVersion: n.GetDescription().GetEngine(),
		})
		l.objects = append(l.objects, n)
	}
	return l
}

// managerStatus is Docker's MANAGER STATUS: empty for workers.
func managerStatus(n *api.Node) string {
	ms := n.GetManagerStatus()
	switch {
	case n.GetRole() != api.NodeRole_NODE_ROLE_MANAGER && ms == nil:
		return ""
	case ms.GetLeader():
		return "Leader"
	case ms.GetReachable():
		return "Reachable"
	}
	return "Unreachable"
}

func newNodeInspectCommand(c *cli) *cobra.Command {
	cmd := inspectCommand(c, &cobra.Command{
		Use:   "inspect [flags] NODE...",
		Short: "Show nodes in detail",
		Long: `Show nodes (by hostname, ID or unique ID prefix) as a JSON array.

--format TEMPLATE runs a Go template per node over the api.Node type, so
fields are named as in Go: {{.Id}}, {{.Description.Hostname}},
{{.Status.State}}, {{json .Spec}}. The node's capacity is its description
(nano_cpus, memory_bytes).
--pretty prints a summary for people instead, with what the node's tasks
reserve of its capacity.`,
		Args: minArgs(1, "at least one NODE argument"),
	}, "node", func(ctx context.Context, client api.ControlClient, name string) (*api.Node, error) {
		resp, err := client.GetNode(ctx, &api.GetNodeRequest{Node: name})
		return resp.GetNode(), err
	})
	var pretty bool
	cmd.Flags().BoolVar(&pretty, "pretty", false, "print a human-readable summary, with the resources reserved")
	objects := cmd.RunE
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if !pretty {
			return objects(cmd, args)
		}
		return c.run(func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("format") {
				return usageError{cmd: cmd, err: errors.New("--pretty and --format cannot be used together")}
			}
			client, err := c.control(cmd)
			if err != nil {
				return err
			}
			found, errs := getEach(args, func(name string) (*api.GetNodeResponse, error) {
				return client.GetNode(cmd.Context(), &api.GetNodeRequest{Node: name})
			})
			if err := printEachPretty(cmd.OutOrStdout(), found, printPrettyNode); err != nil {
				return err
			}
			return errs
		})(cmd, args)
	}
	return cmd
}
