package ctl

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// serviceWriteAttempts bounds read-modify-write retries of one change of a
// service: an Aborted update means the service changed between our read
// and write (another command, or the managers recording a rolling
// update's progress), and a few rereads settle any human-speed race.
const serviceWriteAttempts = 3

// updateService rewrites the spec of service ref with change, which
// returns an error to refuse the change. It reports the service as stored
// and whether anything was written: an unchanged spec is not sent.
func updateService(ctx context.Context, client api.ControlClient, ref string, change func(svc *api.Service, spec *api.ServiceSpec) error) (*api.Service, bool, error) {
	return rewrite(serviceWriteAttempts, func() (*api.Service, *api.ServiceSpec, error) {
		got, err := client.GetService(ctx, &api.GetServiceRequest{Service: ref})
		if err != nil {
			return nil, nil, err
		}
		return got.GetService(), got.GetService().GetSpec(), nil
	}, change, func(svc *api.Service, spec *api.ServiceSpec) (*api.Service, error) {
		resp, err := client.UpdateService(ctx, &api.UpdateServiceRequest{Service: svc.GetId(), Version: svc.GetMeta().GetVersion(), Spec: spec})
		return resp.GetService(), err
	})
}

// rollingOut reports whether svc, as a change returned it, is rolling its
// spec out (or back): then waiting follows the rollout.
func rollingOut(svc *api.Service) bool {
	st := svc.GetUpdateStatus()
	return st.GetSpecVersion() == svc.GetSpecVersion() &&
		(st.GetState() == api.UpdateState_UPDATE_STATE_UPDATING || st.GetState() == api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED)
}

// rolloutHelp explains rolling updates, for the --help of the commands
// that start them.
const rolloutHelp = `A change of what the tasks run (image, arguments, entrypoint, environment,
user, workdir, hostname, stop grace period, restart policy, constraints,
networks, whether ports are published at all, or --force) replaces the
tasks by a rolling update: --update-parallelism slots at a time (0: all),
stop-first (the old task stops, then the new one starts: at most that many
slots are down) or start-first (the new task starts next to the old one,
which stops once the new one runs: no slot is ever down). A slot's place
goes to the next slot once its new task runs, after --update-delay; a new
task that fails before it ran for --update-monitor is a failure, and more
failures than --update-max-failure-ratio of the slots take the failure
action: pause, continue, or rollback (to the previous spec, as the
--rollback-* flags say). Replicas, labels and the update settings change
no task.

Unless --detach is given, the command follows the rollout slot by slot and
exits non-zero if it pauses or rolls back, naming the task that failed
and why.`

func newServiceUpdateCommand(c *cli) *cobra.Command {
	f := specFlags{update: true}
	var w waitFlags
	cmd := &cobra.Command{
		Use:   "update [flags] SERVICE",
		Short: "Change a service",
		Long: `Change a service (by name, ID or unique ID prefix) and print its name. Every
flag of ` + "`service create`" + ` works here; lists change with --X-add and --X-rm
(--env-add, --label-rm, --publish-add...), --image and --args replace the
image and its arguments, and --force replaces every task without a change.

` + rolloutHelp,
		Example: `  shoalctl service update --image nginx:1.28 web
  shoalctl service update --image nginx:1.28 --update-parallelism 2 --update-order start-first web
  shoalctl service update --env-add MODE=debug --env-rm VERBOSE --update-failure-action rollback web
  shoalctl service update --force web`,
		Args: exactArgs(1, "exactly one SERVICE argument"),
	}
	fs := cmd.Flags()
	f.register(fs)
	w.register(fs)
	health := addHealthFlags(fs)
	var placement placementFlags
	placement.addPlacementFlags(fs)
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		if !f.given(fs) && !health.given() && !placement.given(fs) {
			return usageError{cmd: cmd, err: errors.New("nothing to update: give a flag that changes the service (see --help), or --force to replace its tasks")}
		}
		if err := f.check(fs); err != nil {
			return usageError{cmd: cmd, err: err}
		}
		if err := health.apply(&api.ServiceSpec{}); err != nil {
			return usageError{cmd: cmd, err: err}
		}
		if w.timeout < 0 {
			return usageError{cmd: cmd, err: fmt.Errorf("--timeout must not be negative, got %s", w.timeout)}
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		networkID := func(ref string) string {
			resp, err := client.GetNetwork(ctx, &api.GetNetworkRequest{Network: ref})
			if err != nil {
				return ""
			}
			return resp.GetNetwork().GetId()
		}
		svc, _, err := updateService(ctx, client, args[0], func(_ *api.Service, spec *api.ServiceSpec) error {
			if err := f.apply(fs, spec, networkID); err != nil {
				return err
			}
			if err := health.apply(spec); err != nil {
				return err
			}
			return placement.apply(fs, spec)
		})
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		name := svc.GetSpec().GetName()
		fmt.Fprintln(out, name)
		if w.detach {
			return nil
		}
		return c.waitConverged(ctx, client, out, w, waitRequest{
			service: svc,
			rollout: rollingOut(svc),
			stays:   fmt.Sprintf("service %s was updated but did not converge; see `shoalctl service ps %s`", name, name),
		})
	})
	return cmd
}

func newServiceRollbackCommand(c *cli) *cobra.Command {
	var w waitFlags
	cmd := &cobra.Command{
		Use:   "rollback [flags] SERVICE",
		Short: "Return a service to its previous spec",
		Long: `Return a service (by name, ID or unique ID prefix) to the spec it had before
its last change, and print its name. The slots that run the last spec are
replaced as the --rollback-* settings of that spec say (see ` + "`service update`" + `);
slots the last update never reached are left alone. The spec left becomes
the previous one: a second rollback undoes the first. A rollback the
failure action took leaves no previous spec.

Unless --detach is given, the command follows the rollback slot by slot
and exits non-zero if it pauses.`,
		Example: `  shoalctl service rollback web`,
		Args:    exactArgs(1, "exactly one SERVICE argument"),
	}
	w.register(cmd.Flags())
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		if w.timeout < 0 {
			return usageError{cmd: cmd, err: fmt.Errorf("--timeout must not be negative, got %s", w.timeout)}
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		resp, err := client.RollbackService(cmd.Context(), &api.RollbackServiceRequest{Service: args[0]})
		if err != nil {
			return err
		}
		svc := resp.GetService()
		out := cmd.OutOrStdout()
		name := svc.GetSpec().GetName()
		fmt.Fprintln(out, name)
		if w.detach {
			return nil
		}
		return c.waitConverged(cmd.Context(), client, out, w, waitRequest{
			service:  svc,
			rollout:  true,
			rollback: true,
			stays:    fmt.Sprintf("service %s was rolled back but did not converge; see `shoalctl service ps %s`", name, name),
		})
	})
	return cmd
}
