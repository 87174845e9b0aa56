package ctl

import (
	"context"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func newServiceRmCommand(c *cli) *cobra.Command {
	return rmCommand(c, &cobra.Command{
		Use:     "rm SERVICE...",
		Aliases: []string{"remove"},
		Short:   "Remove services",
		Long: `Remove services (by name, ID or unique ID prefix); their tasks are shut down
and removed in the background. Each removed service's argument is printed.
Every argument is tried; the command fails if any could not be removed.`,
		Args: minArgs(1, "at least one SERVICE argument"),
	}, func(ctx context.Context, client api.ControlClient, name string) error {
		_, err := client.RemoveService(ctx, &api.RemoveServiceRequest{Service: name})
		return err
	})
}
