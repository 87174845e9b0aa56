package ctl

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func newServiceInspectCommand(c *cli) *cobra.Command {
	var (
		format string
		pretty bool
	)
	cmd := &cobra.Command{
		Use:   "inspect [flags] SERVICE...",
		Short: "Show services in detail",
		Long: `Show services (by name, ID or unique ID prefix) as a JSON array.

--format TEMPLATE runs a Go template per service over the api.Service type,
so fields are named as in Go: {{.Id}}, {{.Spec.Name}}, {{.SpecVersion}},
{{.Spec.Task.Container.Image}}, {{json .Spec}}, {{.UpdateStatus.State}},
{{.UpdateStatus.Message}}, {{.PreviousSpec.Task.Container.Image}}.
--pretty prints a summary for people instead.`,
		Example: `  shoalctl service inspect --format '{{.Spec.Task.Container.Image}}' web`,
		Args:    minArgs(1, "at least one SERVICE argument"),
	}
	cmd.Flags().StringVarP(&format, "format", "f", "", "print as \"json\" (default) or a Go template run per service")
	cmd.Flags().BoolVar(&pretty, "pretty", false, "print a human-readable summary")
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		if pretty && format != "" {
			return usageError{cmd: cmd, err: errors.New("--pretty and --format cannot be used together")}
		}
		if err := checkInspectFormat(format); err != nil {
			return err
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		found, errs := getEach(args, func(name string) (*api.GetServiceResponse, error) {
			return client.GetService(cmd.Context(), &api.GetServiceRequest{Service: name})
		})
		out := cmd.OutOrStdout()
		if pretty {
			if err := printEachPretty(out, found, printPrettyService); err != nil {
				return err
			}
		} else {
			services := make([]*api.Service, len(found))
			for i, resp := range found {
				services[i] = resp.GetService()
			}
			if err := printObjects(out, format, services); err != nil {
				return err
			}
		}
		return errs
	})
	return cmd
}

// printPrettyService is `service inspect --pretty`.
func printPrettyService(w io.Writer, resp *api.GetServiceResponse) error {
	s := resp.GetService()
	spec := s.GetSpec()
	pt := newPrettyTable()
	line, section := pt.line, pt.section
	optional := func(indent int, key, value string) {
		if value != "" {
			line(indent, key, value)
		}
	}
	line(0, "ID", s.GetId())
	line(0, "Name", spec.GetName())
	pt.labels(spec.GetLabels())
	line(0, "Spec version", s.GetSpecVersion())
	optional(0, "Created", timeText(s.GetMeta().GetCreatedAt()))
	optional(0, "Updated", timeText(s.GetMeta().GetUpdatedAt()))
	if r := spec.GetReplicated(); r != nil {
		line(0, "Mode", "Replicated")
		line(1, "Replicas", fmt.Sprintf("%d (%d running)", r.GetReplicas(), resp.GetCounts().GetRunning()))
	}
	pt.otherModes(spec, resp.GetCounts())
	if st := s.GetUpdateStatus(); st != nil {
		section("Update status")
		line(1, "State", strings.ReplaceAll(api.UpdateStateName(st.GetState()), "_", " "))
		optional(1, "Started", timeText(st.GetStartedAt()))
		optional(1, "Completed", timeText(st.GetCompletedAt()))
		optional(1, "Message", st.GetMessage())
		inFlight := 0
		for _, r := range st.GetSlots() {
			if r.GetPhase() != api.UpdatePhase_UPDATE_PHASE_FAILED {
				inFlight++
			}
		}
		line(1, "Slots", fmt.Sprintf("%d updated, %d failed, %d in flight", st.GetUpdated(), st.GetFailures(), inFlight))
	}
	task := spec.GetTask()
	pt.placement(task.GetPlacement())
	pt.resources(task.GetResources())
	if r := task.GetRestart(); r != nil {
		section("Restart policy")
		optional(1, "Condition", strings.ToLower(enumWord(r.GetCondition().String(), "RESTART_CONDITION_")))
		optional(1, "Delay", durationText(r.GetDelay()))
		optional(1, "Max delay", durationText(r.GetMaxDelay()))
		if r.GetMaxAttempts() > 0 {
			line(1, "Max attempts", r.GetMaxAttempts())
		}
		if w := r.GetWindow().AsDuration(); w > 0 {
			line(1, "Window", w)
		}
	}
	for _, cfg := range []struct {
		title string
		c     *api.UpdateConfig
	}{{"Update config", spec.GetUpdate()}, {"Rollback config", spec.GetRollback()}} {
		if cfg.c == nil {
			continue
		}
		section(cfg.title)
		parallelism := fmt.Sprint(cfg.c.GetParallelism())
		if cfg.c.GetParallelism() == 0 {
			parallelism = "0 (all at once)"
		}
		line(1, "Parallelism", parallelism)
		line(1, "Delay", cfg.c.GetDelay().AsDuration())
		line(1, "On failure", api.FailureActionName(cfg.c.GetFailureAction()))
		line(1, "Monitoring period", cfg.c.GetMonitor().AsDuration())
		line(1, "Max failure ratio", cfg.c.GetMaxFailureRatio())
		line(1, "Order", api.UpdateOrderName(cfg.c.GetOrder()))
	}
	c := task.GetContainer()
	section("Container")
	line(1, "Image", c.GetImage())
	optional(1, "Entrypoint", strings.Join(c.GetCommand(), " "))
	optional(1, "Args", strings.Join(c.GetArgs(), " "))
	if len(c.GetEnv()) > 0 {
		line(1, "Env", strings.Join(c.GetEnv(), " "))
	}
	optional(1, "Dir", c.GetDir())
	optional(1, "User", c.GetUser())
	optional(1, "Hostname", c.GetHostname())
	optional(1, "Stop grace period", durationText(c.GetStopGracePeriod()))
	prettyHealthcheck(c.GetHealthcheck(), section, line, optional)
	if prev := s.GetPreviousSpec(); prev != nil {
		section("Previous spec")
		line(1, "Spec version", s.GetPreviousSpecVersion())
		line(1, "Image", prev.GetTask().GetContainer().GetImage())
		if r := prev.GetReplicated(); r != nil {
			line(1, "Replicas", r.GetReplicas())
		}
	}
	return pt.writeTo(w)
}

func durationText(d *durationpb.Duration) string {
	if d == nil {
		return ""
	}
	return d.AsDuration().String()
}

func timeText(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}
