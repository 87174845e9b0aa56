package ctl

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func newClusterCACommand(c *cli) *cobra.Command {
	var rotate bool
	cmd := &cobra.Command{
		Use:   "ca [flags]",
		Short: "Show the root CA, or rotate it",
		Long: `Show the cluster's root CA and the progress of a rotation, or start one.

--rotate makes a new root CA. Every node trusts both roots while the nodes
renew their certificates (workers first, then managers; each within a
heartbeat or two). When every node holds a certificate of the new root, the
old root is retired: no node trusts it any more, the join tokens change
(they name the root), and admin certificates it signed stop working: issue
new ones with ` + "`shoalctl cluster admin-cert issue`" + ` (on a manager's local socket, or
with an admin certificate issued during the rotation). A node that stays
down holds the rotation up: bring it back or remove it.`,
		Example: `  shoalctl cluster ca
  shoalctl cluster ca --rotate`,
		Args: noArgs,
	}
	cmd.Flags().BoolVar(&rotate, "rotate", false, "replace the root CA with a new one")
	cmd.RunE = c.run(func(cmd *cobra.Command, _ []string) error {
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if rotate {
			resp, err := client.RotateRootCA(cmd.Context(), &api.RotateRootCARequest{})
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(out, "Started rotating the root CA to %s: the nodes renew their certificates now, and the old root is retired once all have (see `shoalctl cluster ca`).\n", resp.GetDigest())
			return err
		}
		cl, err := client.GetCluster(cmd.Context(), &api.GetClusterRequest{})
		if err != nil {
			return err
		}
		nodes, err := client.ListNodes(cmd.Context(), &api.ListNodesRequest{})
		if err != nil {
			return err
		}
		_, err = fmt.Fprint(out, caStatus(cl.GetCluster(), nodes.GetNodes()))
		return err
	})
	return cmd
}

// caStatus says which root the cluster has and how far a rotation is.
func caStatus(c *api.Cluster, nodes []*api.Node) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Root CA: %s\n", c.GetRootCa().GetDigest())
	rot := c.GetCaRotation()
	if rot == nil {
		b.WriteString("Rotation: none\n")
		return b.String()
	}
	var left []string
	for _, n := range nodes {
		if n.GetCertificate().GetIssuer() != rot.GetNewRoot().GetDigest() {
			name := n.GetDescription().GetHostname()
			if name == "" {
				name = api.ShortID(n.GetId())
			}
			left = append(left, name)
		}
	}
	fmt.Fprintf(&b, "Rotation: to %s, started %s: %d of %d nodes renewed\n", rot.GetNewRoot().GetDigest(),
		rot.GetStartedAt().AsTime().UTC().Format(time.RFC3339), len(nodes)-len(left), len(nodes))
	if len(left) > 0 {
		fmt.Fprintf(&b, "Waiting for: %s\n", strings.Join(left, ", "))
	}
	return b.String()
}
