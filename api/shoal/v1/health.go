package shoalv1

import (
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
)

// Docker's health check defaults, which users coming from Docker expect:
// a HEALTHCHECK without options checks every 30s, gives each check 30s and
// calls the container unhealthy after 3 failures in a row.
const (
	DefaultHealthInterval = 30 * time.Second
	DefaultHealthTimeout  = 30 * time.Second
	DefaultHealthRetries  = 3
)

// minHealthDuration is the shortest interval or timeout a health check may
// have, as in Docker: below it the node would do nothing but check.
const minHealthDuration = time.Millisecond

// The first word of a health check's test says how to run the rest.
const (
	// HealthTestNone disables the image's health check.
	HealthTestNone = "NONE"
	// HealthTestCmd runs the rest as argv, without a shell.
	HealthTestCmd = "CMD"
	// HealthTestShell runs the one command after it with /bin/sh -c.
	HealthTestShell = "CMD-SHELL"
)

// Healthy reports whether a task runs and, if it has a health check, its
// check has passed: the one rule for "this task is up". The dispatcher
// makes a task a load-balancer backend and a DNS answer only while it is
// Serving (Healthy and meant to run); an updater moves on from a task once
// it is Healthy.
//
// Whether a task has a health check is known only to its node (the image
// may carry one), which reports STARTING in the same report as RUNNING:
// a RUNNING task without a health state has no check.
func Healthy(t *Task) bool {
	if t.GetStatus().GetState() != TaskState_TASK_STATE_RUNNING {
		return false
	}
	switch t.GetStatus().GetHealth() {
	case TaskHealth_TASK_HEALTH_UNSPECIFIED, TaskHealth_TASK_HEALTH_HEALTHY:
		return true
	}
	return false
}

// Serving reports whether a task should receive traffic: it is Healthy
// and the managers still want it to run, so a task told to stop leaves
// the load balancers in the same message that tells its node to stop it.
func Serving(t *Task) bool {
	return Healthy(t) && t.GetDesiredState() == TaskState_TASK_STATE_RUNNING
}

// HealthName is a task health as users see it: "healthy", "starting";
// "" for a task without a health check.
func HealthName(h TaskHealth) string {
	if h == TaskHealth_TASK_HEALTH_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(h.String(), "TASK_HEALTH_"))
}

// validateHealthConfig checks a spec's health check: a test in one of
// Docker's forms, and timings the node can keep.
func validateHealthConfig(h *HealthConfig) error {
	if h == nil {
		return nil
	}
	const field = "task.container.healthcheck"
	if test := h.GetTest(); len(test) > 0 {
		switch test[0] {
		case HealthTestNone:
			if len(test) > 1 {
				return specErr(field+".test", "NONE takes no command, got %q", test[1:])
			}
		case HealthTestCmd:
			if len(test) < 2 || test[1] == "" {
				return specErr(field+".test", "CMD needs a command to run: [\"CMD\", \"/bin/check\", ARGS...]")
			}
		case HealthTestShell:
			if len(test) != 2 || strings.TrimSpace(test[1]) == "" {
				return specErr(field+".test", "CMD-SHELL takes one shell command: [\"CMD-SHELL\", \"curl -f http://localhost/\"]")
			}
		default:
			return specErr(field+".test", "%q: the first word must be NONE, CMD or CMD-SHELL", test[0])
		}
	}
	for _, d := range []struct {
		name  string
		value *durationpb.Duration
		min   time.Duration
	}{
		{"interval", h.GetInterval(), minHealthDuration},
		{"timeout", h.GetTimeout(), minHealthDuration},
		{"start_period", h.GetStartPeriod(), 0},
	} {
		switch {
		case d.value == nil:
		case d.value.CheckValid() != nil:
			return specErr(field+"."+d.name, "not a valid duration: %v", d.value.CheckValid())
		case d.min == 0 && d.value.AsDuration() < 0:
			return specErr(field+"."+d.name, "%v must not be negative", d.value.AsDuration())
		case d.value.AsDuration() < d.min:
			return specErr(field+"."+d.name, "%v must be at least %v (leave it unset for the image's or the default)", d.value.AsDuration(), d.min)
		}
	}
	if h.GetRetries() < 0 {
		return specErr(field+".retries", "%d must not be negative (0 means the default, %d)", h.GetRetries(), DefaultHealthRetries)
	}
	return nil
}
