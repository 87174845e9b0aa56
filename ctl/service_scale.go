package ctl

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// scaleTarget is one SERVICE=REPLICAS argument.
type scaleTarget struct {
	service  string
	replicas uint64
}

func parseScaleArg(arg string) (scaleTarget, error) {
	name, n, ok := strings.Cut(arg, "=")
	if !ok || name == "" {
		return scaleTarget{}, fmt.Errorf("invalid scale argument %q: want SERVICE=REPLICAS", arg)
	}
	replicas, err := strconv.ParseUint(n, 10, 64)
	if err != nil {
		return scaleTarget{}, fmt.Errorf("invalid scale argument %q: REPLICAS must be a whole number, 0 or more", arg)
	}
	return scaleTarget{service: name, replicas: replicas}, nil
}

func newServiceScaleCommand(c *cli) *cobra.Command {
	var w waitFlags
	cmd := &cobra.Command{
		Use:   "scale SERVICE=REPLICAS...",
		Short: "Change the number of replicas of services",
		Long: `Set the number of replicas of one or more replicated services.

` + convergeHelp,
		Example: `  shoalctl service scale web=5 worker=2`,
		Args:    minArgs(1, "at least one SERVICE=REPLICAS argument"),
	}
	w.register(cmd.Flags())
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		targets := make([]scaleTarget, len(args))
		for i, a := range args {
			t, err := parseScaleArg(a)
			if err != nil {
				return usageError{cmd: cmd, err: err}
			}
			targets[i] = t
		}
		if w.timeout < 0 {
			return usageError{cmd: cmd, err: fmt.Errorf("--timeout must not be negative, got %s", w.timeout)}
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		var (
			errs   []error
			scaled []*api.Service
		)
		for _, t := range targets {
			svc, err := scale(cmd, client, t)
			if err != nil {
				errs = append(errs, argError(t.service, err))
				continue
			}
			fmt.Fprintf(out, "%s scaled to %d\n", svc.GetSpec().GetName(), t.replicas)
			scaled = append(scaled, svc)
		}
		if !w.detach {
			for _, svc := range scaled {
				name := svc.GetSpec().GetName()
				err := c.waitConverged(cmd.Context(), client, out, w, waitRequest{
					service: svc,
					stays:   fmt.Sprintf("service %s stays scaled; see `shoalctl service ps %s`", name, name),
				})
				if err != nil {
					errs = append(errs, err)
				}
			}
		}
		return errors.Join(errs...)
	})
	return cmd
}

// scale sets the replicas of one service and returns the service as
// stored.
func scale(cmd *cobra.Command, client api.ControlClient, t scaleTarget) (*api.Service, error) {
	svc, _, err := updateService(cmd.Context(), client, t.service, func(svc *api.Service, spec *api.ServiceSpec) error {
		if spec.GetReplicated() == nil {
			return fmt.Errorf("service %s is not a replicated service; only replicated services scale", svc.GetSpec().GetName())
		}
		spec.GetReplicated().Replicas = t.replicas
		return nil
	})
	return svc, err
}
