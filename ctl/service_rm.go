package ctl

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func newServiceRmCommand(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "rm SERVICE...",
		Aliases: []string{"remove"},
		Short:   "Remove services",
		Long: `Remove services (by name, ID or unique ID prefix); their tasks are shut down
and removed in the background. Each removed service's argument is printed.
Every argument is tried; the command fails if any could not be removed.`,
		Args: minArgs(1, "at least one SERVICE argument"),
	}
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		var errs []error
		for _, name := range args {
			if _, err := client.RemoveService(cmd.Context(), &api.RemoveServiceRequest{Service: name}); err != nil {
				errs = append(errs, argError(name, err))
				continue
			}
			fmt.Fprintln(cmd.OutOrStdout(), name)
		}
		return errors.Join(errs...)
	})
	return cmd
}
