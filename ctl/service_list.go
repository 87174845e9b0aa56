package ctl

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func newServiceCommand(c *cli) *cobra.Command {
	return groupCommand("service", "Manage services",
		newServiceCreateCommand(c),
		newServiceLsCommand(c),
		newServicePsCommand(c),
		newServiceInspectCommand(c),
		newServiceScaleCommand(c),
		newServiceUpdateCommand(c),
		newServiceRollbackCommand(c),
		newServiceRmCommand(c),
	)
}

// serviceRow is a line of `service ls`, and what its --format templates see.
type serviceRow struct {
	ID       string
	Name     string
	Mode     string
	Replicas string // running/desired; for jobs also (completed/completions completed)
	Image    string
}

func newServiceLsCommand(c *cli) *cobra.Command {
	return listCommand(c, &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List services",
		Long: `List services, sorted by name.

--format TEMPLATE runs a Go template per service with the fields
.ID .Name .Mode .Replicas (running/desired) .Image
and the functions json, join, lower and upper.`,
		Example: `  shoalctl service ls --format '{{.Name}} {{.Replicas}}'`,
		Args:    noArgs,
	}, func(ctx context.Context, client api.ControlClient, p *listPrinter) (listing[serviceRow], error) {
		resp, err := client.ListServices(ctx, &api.ListServicesRequest{})
		if err != nil {
			return listing[serviceRow]{}, err
		}
		return serviceListing(p, resp), nil
	})
}

func serviceListing(p *listPrinter, resp *api.ListServicesResponse) listing[serviceRow] {
	services := slices.Clone(resp.GetServices())
	slices.SortFunc(services, func(a, b *api.Service) int {
		return cmp.Or(strings.Compare(a.GetSpec().GetName(), b.GetSpec().GetName()), strings.Compare(a.GetId(), b.GetId()))
	})
	l := listing[serviceRow]{
		columns: []column[serviceRow]{
			{"ID", func(r serviceRow) string { return r.ID }},
			{"NAME", func(r serviceRow) string { return r.Name }},
			{"MODE", func(r serviceRow) string { return r.Mode }},
			{"REPLICAS", func(r serviceRow) string { return r.Replicas }},
			{"IMAGE", func(r serviceRow) string { return r.Image }},
		},
		id: func(r serviceRow) string { return r.ID },
	}
	for _, s := range services {
		counts := resp.GetCounts()[s.GetId()]
		l.rows = append(l.rows, serviceRow{
			ID:       p.shortID(s.GetId()),
			Name:     s.GetSpec().GetName(),
			Mode:     api.ModeName(s.GetSpec()),
			Replicas: replicas(s.GetSpec(), counts),
			Image:    s.GetSpec().GetTask().GetContainer().GetImage(),
		})
		l.objects = append(l.objects, s)
	}
	return l
}

// taskRow is a line of `service ps`, and what its --format templates see.
type taskRow struct {
	ID           string
	Name         string
	Image        string
	Node         string
	DesiredState string
	CurrentState string
	Error        string
}

// maxErrorLen is how much of a task's error a table shows without
// --no-trunc, so that one long error does not push every row off screen.
const maxErrorLen = 40

// psFilter is a --filter of `service ps`.
type psFilter struct {
	desired map[api.TaskState]bool
	nodes   []string
}

func parsePsFilters(args []string) (psFilter, error) {
	var f psFilter
	for _, a := range args {
		key, value, ok := strings.Cut(a, "=")
		if !ok || value == "" {
			return f, fmt.Errorf("invalid --filter %q: want KEY=VALUE", a)
		}
		switch key {
		case "desired-state":
			state, ok := parseTaskState(value)
			if !ok {
				return f, fmt.Errorf("invalid --filter %q: desired-state is running, shutdown, accepted or remove", a)
			}
			if f.desired == nil {
				f.desired = map[api.TaskState]bool{}
			}
			f.desired[state] = true
		case "node":
			f.nodes = append(f.nodes, value)
		default:
			return f, fmt.Errorf("invalid --filter %q: known filters are desired-state and node", a)
		}
	}
	return f, nil
}

func parseTaskState(s string) (api.TaskState, bool) {
	for v := range api.TaskState_name {
		if st := api.TaskState(v); st != api.TaskState_TASK_STATE_UNSPECIFIED && api.StateName(st) == strings.ToLower(s) {
			return st, true
		}
	}
	return 0, false
}

// keep reports whether a task passes the filter; node matches id, id
// prefix or hostname.
func (f psFilter) keep(t *api.Task, hostname string) bool {
	if f.desired != nil && !f.desired[t.GetDesiredState()] {
		return false
	}
	if len(f.nodes) == 0 {
		return true
	}
	for _, n := range f.nodes {
		if n == hostname || (t.GetNodeId() != "" && strings.HasPrefix(t.GetNodeId(), n)) {
			return true
		}
	}
	return false
}

func newServicePsCommand(c *cli) *cobra.Command {
	return psCommand(c, &cobra.Command{
		Use:   "ps [flags] SERVICE...",
		Short: "List the tasks of services",
		Long: `List the tasks of one or more services, the current task of each slot first
and its predecessors below it (\_), newest first.

--format TEMPLATE runs a Go template per task with the fields
.ID .Name .Image .Node .DesiredState .CurrentState .Error
and the functions json, join, lower and upper.`,
		Example: `  shoalctl service ps web
  shoalctl service ps --filter desired-state=running web`,
		Args: minArgs(1, "at least one SERVICE argument"),
	}, func(_ *cobra.Command, args []string, _ string) ([]string, error) {
		return args, nil
	}, func(name string) *api.ListTasksRequest {
		return &api.ListTasksRequest{Service: name}
	})
}

// psCommand makes cmd a task table (`service ps`, `node ps`): the output
// flags and --filter, both checked before any RPC, and a body that asks
// for the tasks of every name (query) and prints them as one table. names
// turns the arguments into those names; self is the node whose shoald
// answered, "" if it did not say.
func psCommand(c *cli, cmd *cobra.Command, names func(cmd *cobra.Command, args []string, self string) ([]string, error), query func(name string) *api.ListTasksRequest) *cobra.Command {
	var (
		o       outputFlags
		filters []string
	)
	o.register(cmd.Flags())
	cmd.Flags().StringArrayVarP(&filters, "filter", "f", nil, "show only tasks matching desired-state=STATE or node=NODE (repeatable)")
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		p, err := newListPrinter(o)
		if err != nil {
			return err
		}
		filter, err := parsePsFilters(filters)
		if err != nil {
			return usageError{cmd: cmd, err: err}
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		var header metadata.MD
		nodes, err := client.ListNodes(cmd.Context(), &api.ListNodesRequest{}, grpc.Header(&header))
		if err != nil {
			return err
		}
		args, err = names(cmd, args, selfNode(header))
		if err != nil {
			return err
		}
		tasks, errs := getEach(args, func(name string) ([]*api.Task, error) {
			resp, err := client.ListTasks(cmd.Context(), query(name))
			return resp.GetTasks(), err
		})
		if err := printList(cmd.OutOrStdout(), p, c.taskListing(p, slices.Concat(tasks...), nodes.GetNodes(), filter)); err != nil {
			return err
		}
		return errs
	})
	return cmd
}

// taskListing orders tasks like `docker service ps`: by service and slot,
// the newest task of a slot first as its current one and its predecessors
// under it marked with \_.
func (c *cli) taskListing(p *listPrinter, tasks []*api.Task, nodes []*api.Node, filter psFilter) listing[taskRow] {
	hostnames := make(map[string]string, len(nodes))
	for _, n := range nodes {
		hostnames[n.GetId()] = n.GetDescription().GetHostname()
	}
	tasks = slices.Clone(tasks)
	slices.SortStableFunc(tasks, func(a, b *api.Task) int {
		if c := cmp.Or(strings.Compare(a.GetServiceName(), b.GetServiceName()), cmp.Compare(a.GetSlot(), b.GetSlot()),
			strings.Compare(placeOf(a), placeOf(b))); c != 0 {
			return c
		}
		if newer(a, b) {
			return -1
		}
		return 1
	})
	l := listing[taskRow]{
		columns: []column[taskRow]{
			{"ID", func(r taskRow) string { return r.ID }},
			{"NAME", func(r taskRow) string { return r.Name }},
			{"IMAGE", func(r taskRow) string { return r.Image }},
			{"NODE", func(r taskRow) string { return r.Node }},
			{"DESIRED STATE", func(r taskRow) string { return r.DesiredState }},
			{"CURRENT STATE", func(r taskRow) string { return r.CurrentState }},
			{"ERROR", func(r taskRow) string { return r.Error }},
		},
		id: func(r taskRow) string { return r.ID },
	}
	now := c.env.now()
	var prev *api.Task
	for _, t := range tasks {
		// The slot's current task is decided before filtering, so that a
		// filtered list still marks predecessors as such.
		older := prev != nil && prev.GetServiceName() == t.GetServiceName() && api.TaskPlace(prev) == api.TaskPlace(t)
		prev = t
		node := hostnames[t.GetNodeId()]
		if !filter.keep(t, node) {
			continue
		}
		if node == "" {
			node = p.shortID(t.GetNodeId())
		}
		name := fmt.Sprintf("%s.%d", t.GetServiceName(), t.GetSlot())
		if node := placeOf(t); node != "" {
			name = t.GetServiceName() + "." + p.shortID(node)
		}
		if p.flags.noTrunc {
			name += "." + t.GetId()
		}
		if older {
			name = ` \_ ` + name
		}
		errText := t.GetStatus().GetErr()
		// Why a task waits (no suitable node, with a count per reason) is
		// shown whole: cut, it says nothing (moby/moby#36699).
		if !p.flags.noTrunc && !waiting(t) {
			errText = ellipsis(errText, maxErrorLen)
		}
		status := t.GetStatus()
		var at time.Time
		if ts := status.GetTimestamp(); ts != nil {
			at = ts.AsTime()
		}
		current := since(taskStateTitle(status), at, now)
		// A replacement held back by the restart back-off says so, and for
		// how much longer: that is what a user watching a crash loop needs.
		if nb := t.GetNotBefore(); nb != nil && status.GetState() == api.TaskState_TASK_STATE_NEW && nb.AsTime().After(now) {
			current = fmt.Sprintf("Restart delayed, %v left (back-off step %d)", nb.AsTime().Sub(now).Round(100*time.Millisecond), t.GetBackoffStep())
		}
		l.rows = append(l.rows, taskRow{
			ID:           p.shortID(t.GetId()),
			Name:         name,
			Image:        t.GetSpec().GetContainer().GetImage(),
			Node:         node,
			DesiredState: stateTitle(t.GetDesiredState()),
			CurrentState: current,
			Error:        errText,
		})
		l.objects = append(l.objects, proto.Message(t))
	}
	return l
}

// placeOf is the node a global service's task is told apart by; "" for
// a task that has a slot.
func placeOf(t *api.Task) string {
	if t.GetSlot() == 0 {
		return t.GetNodeId()
	}
	return ""
}

// waiting reports whether a task waits for the managers (NEW or PENDING):
// its error, if any, says why.
func waiting(t *api.Task) bool {
	st := t.GetStatus().GetState()
	return st == api.TaskState_TASK_STATE_NEW || st == api.TaskState_TASK_STATE_PENDING
}

// stateTitle is a task state as tables show it: "Running".
func stateTitle(s api.TaskState) string {
	if s == api.TaskState_TASK_STATE_UNSPECIFIED {
		return ""
	}
	return title(api.StateName(s))
}

// taskStateTitle is a task's state as tables show it, with the health of
// a running task that has a health check: "Running (healthy)".
func taskStateTitle(st *api.TaskStatus) string {
	title := stateTitle(st.GetState())
	if h := api.HealthName(st.GetHealth()); h != "" && st.GetState() == api.TaskState_TASK_STATE_RUNNING {
		title += " (" + h + ")"
	}
	return title
}

// replicas is the REPLICAS column: running/desired, for a job how many of
// its tasks completed out of how many must (as Swarm shows jobs), and the
// tasks the managers could not allocate, which otherwise only `service
// ps` shows.
func replicas(spec *api.ServiceSpec, c *api.ServiceCounts) string {
	s := fmt.Sprintf("%d/%d", c.GetRunning(), c.GetDesired())
	if api.IsJob(spec) {
		s += fmt.Sprintf(" (%d/%d completed)", c.GetCompleted(), c.GetCompletions())
	}
	if n := c.GetUnallocated(); n > 0 {
		s += fmt.Sprintf(" (%d unallocated)", n)
	}
	return s
}
