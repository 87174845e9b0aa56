package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// waitFlags are the flags of commands that wait for a service to converge.
type waitFlags struct {
	detach  bool
	quiet   bool
	timeout time.Duration
}

func (o *waitFlags) register(fs *pflag.FlagSet) {
	fs.BoolVarP(&o.detach, "detach", "d", false, "return at once instead of waiting for the service to converge")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "do not show progress")
	fs.DurationVar(&o.timeout, "timeout", 0, "give up waiting after this long (0: wait until converged or failed)")
}

// convergeHelp explains waiting, for the --help of commands that wait.
const convergeHelp = `Unless --detach is given, the command then follows the service's tasks and
shows each replica's progress (new, pending, assigned, accepted, preparing,
starting, running). It returns as soon as every replica of the new spec
runs and, if it has a health check, has passed it (a task serves only
then; a global service: as soon as every node given a task runs it; a job:
once all its tasks have completed); there is no extra fixed "verify" wait,
so a task that crashes right after starting is noticed by the orchestrator,
not by this command. If a task fails or is rejected first (an unhealthy
task fails), the command
prints the task's error and exits non-zero; the service stays as it is.`

// waitRequest names the change being waited for.
type waitRequest struct {
	// service is as CreateService, UpdateService or RollbackService
	// returned it.
	service *api.Service
	// stays tells the user, after a failure, that the change was made
	// and what to do about it.
	stays string
	// rollout says the change started a rolling update (or a rollback)
	// of the service's spec: it is followed through the service's
	// update_status, and ends as the rollout does.
	rollout bool
	// rollback: the change was `service rollback`.
	rollback bool
}

// waitConverged follows the tasks of the service until it converges, one of
// its tasks fails, the service is removed, the timeout passes or ctx ends.
// Progress goes to out unless quiet.
func (c *cli) waitConverged(ctx context.Context, client api.ControlClient, out io.Writer, o waitFlags, req waitRequest) error {
	name := req.service.GetSpec().GetName()
	var cancel context.CancelFunc
	if o.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel() // ends the watch stream whichever way we return

	stream, err := client.WatchTasks(ctx, &api.WatchTasksRequest{Service: req.service.GetId()})
	if err != nil {
		return waitEnded(ctx, o, req, fmt.Errorf("watch tasks of service %s: %w", name, err))
	}
	progress := &progressWriter{w: out, tty: c.env.isTerminal(out)}
	if o.quiet {
		progress.w = io.Discard
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("shoald ended the watch")
			}
			return waitEnded(ctx, o, req, fmt.Errorf("watch tasks of service %s: %w", name, err))
		}
		if msg.GetRemoved() {
			return fmt.Errorf("service %s was removed before it converged", name)
		}
		svc := msg.GetService()
		if svc == nil {
			svc = req.service
		}
		state := assess(svc, msg.GetTasks(), req.service.GetMeta().GetVersion(), req.service.GetSpecVersion())
		if req.rollout {
			lines, done, err := state.rollout(req)
			if perr := progress.update(lines); perr != nil {
				return fmt.Errorf("show progress: %w", perr)
			}
			if err != nil {
				return err
			}
			if done {
				if !o.quiet {
					fmt.Fprintf(out, "service %s %s\n", name, map[bool]string{false: "updated", true: "rolled back"}[req.rollback])
				}
				return nil
			}
			continue
		}
		if err := progress.update(state.lines()); err != nil {
			return fmt.Errorf("show progress: %w", err)
		}
		if t := state.failed; t != nil {
			return fmt.Errorf("task %s: %s: %s\n%s", api.TaskName(t), api.StateName(t.GetStatus().GetState()),
				t.GetStatus().GetErr(), req.stays)
		}
		if state.converged {
			if !o.quiet {
				fmt.Fprintf(out, "service %s converged\n", name)
			}
			return nil
		}
	}
}

// waitEnded explains a wait that the clock or the user cut short, or
// returns err.
func waitEnded(ctx context.Context, o waitFlags, req waitRequest, err error) error {
	name := req.service.GetSpec().GetName()
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("service %s did not converge within %s; it keeps converging in the background (follow it with `shoalctl service ps %s`)",
			name, o.timeout, name)
	case ctx.Err() != nil:
		return fmt.Errorf("stopped waiting; service %s keeps converging in the background (follow it with `shoalctl service ps %s`)",
			name, name)
	}
	return err
}
