package ctl

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// unlockAdvice is printed with every unlock key shoalctl shows.
const unlockAdvice = `Keep it somewhere safe, away from the managers: a manager that restarts
serves nothing until it is given the key with ` + "`shoald unlock`" + ` on its host,
and a lost key cannot be recovered.`

func newClusterUpdateCommand(c *cli) *cobra.Command {
	var autolock bool
	cmd := &cobra.Command{
		Use:   "update --autolock[=true|false]",
		Short: "Update the cluster's settings",
		Long: `Update the cluster's settings.

--autolock keeps every manager's raft encryption key wrapped by an unlock key
that no manager writes to disk: a stolen manager disk holds no readable state,
and a restarted manager serves nothing until ` + "`shoald unlock`" + ` gives it the key.
Turning it on prints the key; --autolock=false puts the managers' keys back on
their disks, so that they restart unattended.`,
		Example: `  shoalctl cluster update --autolock
  shoalctl cluster update --autolock=false`,
		Args: exactArgs(0, "no arguments"),
	}
	cmd.Flags().BoolVar(&autolock, "autolock", false, "lock managers on restart until they are given the unlock key")
	cmd.RunE = c.run(func(cmd *cobra.Command, _ []string) error {
		if !cmd.Flags().Changed("autolock") {
			return usageError{cmd: cmd, err: errors.New("nothing to update: give --autolock=true or --autolock=false")}
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		resp, err := client.SetAutolock(cmd.Context(), &api.SetAutolockRequest{Autolock: autolock})
		if err != nil {
			return err
		}
		if !autolock {
			_, err = fmt.Fprintln(cmd.OutOrStdout(), "Autolock is off: managers keep their encryption keys on disk and restart unattended.")
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "Autolock is on. The unlock key is:\n\n    %s\n\n%s\n", resp.GetUnlockKey(), unlockAdvice)
		return err
	})
	return cmd
}

func newUnlockKeyCommand(c *cli) *cobra.Command {
	var quiet, rotate bool
	cmd := &cobra.Command{
		Use:   "unlock-key [--rotate] [-q]",
		Short: "Print (or rotate) the key that unlocks a restarted manager",
		Long: `Print the cluster's unlock key (autolock must be on).

--rotate replaces it first: every running manager rewraps its encryption key
with the new one at once. A manager that is down when the key rotates still
needs the key that was current when it stopped: keep the old key until every
manager has been up since.`,
		Example: `  shoalctl cluster unlock-key
  shoalctl cluster unlock-key --rotate -q`,
		Args: exactArgs(0, "no arguments"),
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the key")
	cmd.Flags().BoolVar(&rotate, "rotate", false, "replace the key first")
	cmd.RunE = c.run(func(cmd *cobra.Command, _ []string) error {
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		resp, err := client.GetUnlockKey(cmd.Context(), &api.GetUnlockKeyRequest{Rotate: rotate})
		if err != nil {
			return err
		}
		if quiet {
			if rotate {
				fmt.Fprintln(cmd.ErrOrStderr(), "Rotated the unlock key.")
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), resp.GetUnlockKey())
			return err
		}
		what := "The unlock key is"
		if rotate {
			what = "Rotated the unlock key. The new key is"
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s:\n\n    %s\n\n%s\n", what, resp.GetUnlockKey(), unlockAdvice)
		return err
	})
	return cmd
}
