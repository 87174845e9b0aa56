package ctl

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func newClusterCommand(c *cli) *cobra.Command {
	return groupCommand("cluster", "Manage the cluster",
		newJoinTokenCommand(c),
		newAdminCertCommand(c),
		newClusterCACommand(c),
		newClusterUpdateCommand(c),
		newUnlockKeyCommand(c),
	)
}

// joinRoles are the ROLE words of `cluster join-token`.
var joinRoles = map[string]api.NodeRole{
	"worker":  api.NodeRole_NODE_ROLE_WORKER,
	"manager": api.NodeRole_NODE_ROLE_MANAGER,
}

func parseJoinRole(word string) (api.NodeRole, error) {
	r, ok := joinRoles[word]
	if !ok {
		return 0, fmt.Errorf("invalid ROLE %q: want worker or manager", word)
	}
	return r, nil
}

// noManagerAddr stands for the address in the join command when no
// manager advertises one.
const noManagerAddr = "MANAGER-ADDR"

func newJoinTokenCommand(c *cli) *cobra.Command {
	var quiet, rotate bool
	cmd := &cobra.Command{
		Use:   "join-token [flags] worker|manager",
		Short: "Print the command that joins a node to the cluster",
		Long: `Print the ` + "`shoald join`" + ` command that adds a node to the cluster as a worker or
as a manager, with the join token of that role and a manager's address, and
list the addresses of all managers it can join through.

A token lets anyone who has it join a node, so keep the manager token
secret. --rotate replaces the token first: the old one no longer works,
and nodes that already joined are not affected.`,
		Example: `  shoalctl cluster join-token worker
  shoalctl cluster join-token -q manager
  shoalctl cluster join-token --rotate worker`,
		Args: exactArgs(1, "a ROLE argument (worker or manager)"),
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the token")
	cmd.Flags().BoolVar(&rotate, "rotate", false, "replace the token; the old one stops working")
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		role, err := parseJoinRole(args[0])
		if err != nil {
			return usageError{cmd: cmd, err: err}
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		resp, err := client.GetJoinToken(cmd.Context(), &api.GetJoinTokenRequest{Role: role, Rotate: rotate})
		if err != nil {
			return err
		}
		word := roleWord(role)
		rotated := fmt.Sprintf("Rotated the %s join token: the old one no longer works (nodes that already joined are not affected).\n", word)
		if quiet {
			// Standard output is for scripts, which want the token alone.
			if rotate {
				fmt.Fprint(cmd.ErrOrStderr(), rotated)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetToken())
			return nil
		}
		var b strings.Builder
		if rotate {
			b.WriteString(rotated + "\n")
		}
		managers := resp.GetManagers()
		addr := noManagerAddr
		if len(managers) > 0 {
			addr = managers[0]
		}
		fmt.Fprintf(&b, "To add a %s to this cluster, run this on the new node:\n\n    shoald join --token %s %s\n\n", word, resp.GetToken(), addr)
		if len(managers) > 0 {
			fmt.Fprintf(&b, "Managers it can join through: %s\n", strings.Join(managers, ", "))
		} else {
			fmt.Fprintf(&b, "No manager advertises an address: put a manager's --advertise-addr in place of %s.\n", noManagerAddr)
		}
		_, err = fmt.Fprint(cmd.OutOrStdout(), b.String())
		return err
	})
	return cmd
}
