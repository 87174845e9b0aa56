package shoalv1

import "strings"

// Mode names as the CLI takes them (--mode) and tables show them.
const (
	ModeReplicated    = "replicated"
	ModeGlobal        = "global"
	ModeReplicatedJob = "replicated-job"
	ModeGlobalJob     = "global-job"
)

// ModeName is the name of a spec's mode; "" when it has none.
func ModeName(s *ServiceSpec) string {
	switch s.GetMode().(type) {
	case *ServiceSpec_Replicated:
		return ModeReplicated
	case *ServiceSpec_Global:
		return ModeGlobal
	case *ServiceSpec_ReplicatedJob:
		return ModeReplicatedJob
	case *ServiceSpec_GlobalJob:
		return ModeGlobalJob
	}
	return ""
}

// IsJob reports whether a service runs its tasks to completion.
func IsJob(s *ServiceSpec) bool {
	return s.GetReplicatedJob() != nil || s.GetGlobalJob() != nil
}

// IsGlobal reports whether a service runs a task per node.
func IsGlobal(s *ServiceSpec) bool {
	return s.GetGlobal() != nil || s.GetGlobalJob() != nil
}

// labelPreferencePrefix starts a spread preference: only node labels
// have values an operator chose to spread over.
const labelPreferencePrefix = "node.labels."

// SpreadLabel is the node label a spread preference names
// (node.labels.zone → zone), or "" when it names none.
func SpreadLabel(p *PlacementPreference) string {
	key, ok := strings.CutPrefix(p.GetSpread(), labelPreferencePrefix)
	if !ok {
		return ""
	}
	return key
}

// validateMode checks the mode and what only some modes allow.
func validateMode(s *ServiceSpec) error {
	switch m := s.GetMode().(type) {
	case nil:
		return specErr("mode", "missing: set one of replicated, global, replicated_job or global_job")
	case *ServiceSpec_Replicated:
		if m.Replicated.GetReplicas() > MaxReplicas {
			return specErr("replicas", "%d is more than the limit of %d", m.Replicated.GetReplicas(), MaxReplicas)
		}
	case *ServiceSpec_ReplicatedJob:
		j := m.ReplicatedJob
		switch {
		case j.GetTotalCompletions() == 0:
			return specErr("replicated_job.total_completions", "a job needs at least 1 completion")
		case j.GetTotalCompletions() > MaxReplicas:
			return specErr("replicated_job.total_completions", "%d is more than the limit of %d", j.GetTotalCompletions(), MaxReplicas)
		case j.GetMaxConcurrent() > MaxReplicas:
			return specErr("replicated_job.max_concurrent", "%d is more than the limit of %d", j.GetMaxConcurrent(), MaxReplicas)
		}
	}
	p := s.GetTask().GetPlacement()
	if IsGlobal(s) {
		if p.GetMaxReplicasPerNode() > 0 {
			return specErr("task.placement.max_replicas_per_node", "a %s service runs one task per node already", ModeName(s))
		}
		if len(p.GetPreferences()) > 0 {
			return specErr("task.placement.preferences", "a %s service runs on every eligible node: there is nothing to spread", ModeName(s))
		}
	}
	for _, pref := range p.GetPreferences() {
		if SpreadLabel(pref) == "" {
			return specErr("task.placement.preferences", "spread %q: name a node label, node.labels.KEY", pref.GetSpread())
		}
	}
	return nil
}

// applyModeDefaults fills in what a mode leaves out: a replicated job
// runs all its completions at once unless capped, and a job's tasks are
// restarted only on failure (one that completed is never run again).
func applyModeDefaults(s *ServiceSpec) {
	if j := s.GetReplicatedJob(); j != nil && j.MaxConcurrent == 0 {
		j.MaxConcurrent = j.TotalCompletions
	}
	if IsJob(s) && s.Task.Restart.Condition == RestartCondition_RESTART_CONDITION_UNSPECIFIED {
		s.Task.Restart.Condition = RestartCondition_RESTART_CONDITION_ON_FAILURE
	}
}
