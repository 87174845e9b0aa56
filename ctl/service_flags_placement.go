package ctl

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// placementFlags are the flags of a service's mode, placement and
// resources. The mode flags (--mode, --max-concurrent) are for `service
// create` only: a service's mode cannot change. The others fit `service
// update` as well: apply touches only what was given.
type placementFlags struct {
	mode          string
	maxConcurrent uint64

	prefs         []string
	maxPerNode    uint64
	limitCPU      string
	limitMemory   string
	limitPids     int64
	reserveCPU    string
	reserveMemory string
}

// addModeFlags registers --mode and --max-concurrent.
func (f *placementFlags) addModeFlags(fs *pflag.FlagSet) {
	fs.StringVar(&f.mode, "mode", api.ModeReplicated, "replicated, global (a task on every eligible node), replicated-job (--replicas tasks that run to completion) or global-job")
	fs.Uint64Var(&f.maxConcurrent, "max-concurrent", 0, "replicated-job: tasks that run at once (default: all of --replicas)")
}

// addPlacementFlags registers the placement and resource flags.
func (f *placementFlags) addPlacementFlags(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.prefs, "placement-pref", nil, "spread the tasks over the values of a node label first: spread=node.labels.KEY (repeatable: a tree, in order)")
	fs.Uint64Var(&f.maxPerNode, "replicas-max-per-node", 0, "at most this many tasks of the service on one node (0: no limit)")
	fs.StringVar(&f.limitCPU, "limit-cpu", "", "CPUs the container may use, as a decimal: 0.5, 2")
	fs.StringVar(&f.limitMemory, "limit-memory", "", "memory the container may use (512M, 1.5G); past it the kernel kills the task (OOMKilled)")
	fs.Int64Var(&f.limitPids, "limit-pids", 0, "processes the container may have (0: no limit)")
	fs.StringVar(&f.reserveCPU, "reserve-cpu", "", "CPUs set aside for each task on its node: tasks go only where that much is free")
	fs.StringVar(&f.reserveMemory, "reserve-memory", "", "memory set aside for each task on its node (512M, 1.5G): tasks go only where that much is free")
}

// given reports whether any placement or resource flag was given.
func (f *placementFlags) given(fs *pflag.FlagSet) bool {
	for _, name := range []string{"placement-pref", "replicas-max-per-node", "limit-cpu", "limit-memory", "limit-pids", "reserve-cpu", "reserve-memory"} {
		if fs.Changed(name) {
			return true
		}
	}
	return false
}

// apply sets in spec what the flags that were given say, or says what is
// wrong with them. The mode flags apply only when registered; --replicas
// (a replicated spec's count) becomes a replicated job's completions.
func (f *placementFlags) apply(fs *pflag.FlagSet, spec *api.ServiceSpec) error {
	if fs.Lookup("mode") != nil {
		if err := f.applyMode(fs, spec); err != nil {
			return err
		}
	}
	task := spec.GetTask()
	if task == nil {
		task = &api.TaskSpec{}
		spec.Task = task
	}
	global := api.IsGlobal(spec)
	if fs.Changed("placement-pref") || fs.Changed("replicas-max-per-node") {
		if task.Placement == nil {
			task.Placement = &api.Placement{}
		}
	}
	if fs.Changed("placement-pref") {
		if global {
			return fmt.Errorf("--placement-pref cannot be used with --mode %s: a task runs on every eligible node, there is nothing to spread", api.ModeName(spec))
		}
		task.Placement.Preferences = nil
		for _, p := range f.prefs {
			pref, err := parsePlacementPref(p)
			if err != nil {
				return err
			}
			task.Placement.Preferences = append(task.Placement.Preferences, pref)
		}
	}
	if fs.Changed("replicas-max-per-node") {
		if global {
			return fmt.Errorf("--replicas-max-per-node cannot be used with --mode %s: it runs one task per node already", api.ModeName(spec))
		}
		task.Placement.MaxReplicasPerNode = f.maxPerNode
	}
	return f.applyResources(fs, task)
}

func (f *placementFlags) applyMode(fs *pflag.FlagSet, spec *api.ServiceSpec) error {
	replicas := spec.GetReplicated().GetReplicas()
	switch f.mode {
	case api.ModeReplicated, api.ModeReplicatedJob:
	case api.ModeGlobal, api.ModeGlobalJob:
		if fs.Changed("replicas") {
			return fmt.Errorf("--replicas cannot be used with --mode %s: it runs one task on every eligible node", f.mode)
		}
	default:
		return fmt.Errorf("invalid --mode %q: want replicated, global, replicated-job or global-job", f.mode)
	}
	if fs.Changed("max-concurrent") && f.mode != api.ModeReplicatedJob {
		return fmt.Errorf("--max-concurrent is only for --mode replicated-job, not %s", f.mode)
	}
	switch f.mode {
	case api.ModeGlobal:
		spec.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}}
	case api.ModeGlobalJob:
		spec.Mode = &api.ServiceSpec_GlobalJob{GlobalJob: &api.GlobalJob{}}
	case api.ModeReplicatedJob:
		if replicas == 0 {
			return fmt.Errorf("--replicas must be at least 1 for --mode replicated-job: it is the number of completions")
		}
		spec.Mode = &api.ServiceSpec_ReplicatedJob{ReplicatedJob: &api.ReplicatedJob{
			TotalCompletions: replicas,
			MaxConcurrent:    f.maxConcurrent,
		}}
	}
	return nil
}

// applyResources sets the limits and reservations whose flags were given.
func (f *placementFlags) applyResources(fs *pflag.FlagSet, task *api.TaskSpec) error {
	type amount struct {
		flag  string
		value string
		parse func(string) (int64, error)
		set   func(r *api.ResourceRequirements, v int64)
	}
	amounts := []amount{
		{"limit-cpu", f.limitCPU, api.ParseNanoCPUs, func(r *api.ResourceRequirements, v int64) { limits(r).NanoCpus = v }},
		{"limit-memory", f.limitMemory, api.ParseBytes, func(r *api.ResourceRequirements, v int64) { limits(r).MemoryBytes = v }},
		{"reserve-cpu", f.reserveCPU, api.ParseNanoCPUs, func(r *api.ResourceRequirements, v int64) { reservations(r).NanoCpus = v }},
		{"reserve-memory", f.reserveMemory, api.ParseBytes, func(r *api.ResourceRequirements, v int64) { reservations(r).MemoryBytes = v }},
	}
	for _, a := range amounts {
		if !fs.Changed(a.flag) {
			continue
		}
		v, err := a.parse(a.value)
		if err != nil {
			return fmt.Errorf("invalid --%s: %w", a.flag, err)
		}
		a.set(resources(task), v)
	}
	if fs.Changed("limit-pids") {
		if f.limitPids < 0 {
			return fmt.Errorf("--limit-pids must be 0 or more, got %d", f.limitPids)
		}
		resources(task).PidsLimit = f.limitPids
	}
	r := task.GetResources()
	if l, v := r.GetLimits().GetMemoryBytes(), r.GetReservations().GetMemoryBytes(); l > 0 && l < v {
		return fmt.Errorf("--limit-memory %s is below --reserve-memory %s: a task could never use what is set aside for it", api.FormatBytes(l), api.FormatBytes(v))
	}
	if l, v := r.GetLimits().GetNanoCpus(), r.GetReservations().GetNanoCpus(); l > 0 && l < v {
		return fmt.Errorf("--limit-cpu %s is below --reserve-cpu %s: a task could never use what is set aside for it", api.FormatNanoCPUs(l), api.FormatNanoCPUs(v))
	}
	return nil
}

func resources(task *api.TaskSpec) *api.ResourceRequirements {
	if task.Resources == nil {
		task.Resources = &api.ResourceRequirements{}
	}
	return task.Resources
}

func limits(r *api.ResourceRequirements) *api.Resources {
	if r.Limits == nil {
		r.Limits = &api.Resources{}
	}
	return r.Limits
}

func reservations(r *api.ResourceRequirements) *api.Resources {
	if r.Reservations == nil {
		r.Reservations = &api.Resources{}
	}
	return r.Reservations
}

// parsePlacementPref reads Docker's spread=node.labels.KEY.
func parsePlacementPref(s string) (*api.PlacementPreference, error) {
	kind, value, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(kind) != "spread" {
		return nil, fmt.Errorf("invalid --placement-pref %q: want spread=node.labels.KEY", s)
	}
	pref := &api.PlacementPreference{Spread: strings.TrimSpace(value)}
	if api.SpreadLabel(pref) == "" {
		return nil, fmt.Errorf("invalid --placement-pref %q: spread over a node label, node.labels.KEY", s)
	}
	return pref, nil
}
