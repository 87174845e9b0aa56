package orchestrator

import (
	"slices"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// TestReconcileReplacesUnhealthy: a task its node failed for its health
// check is replaced like any failed task: at once after a healthy run,
// with the back-off when it never got healthy in time (a check that
// fails soon after the start is a crash loop too). A running task that is
// still starting its check, or unhealthy for a moment, is left alone: its
// node decides when it has failed.
func TestReconcileReplacesUnhealthy(t *testing.T) {
	unhealthy := func(tk *api.Task) { tk.Status.Health = api.TaskHealth_TASK_HEALTH_UNHEALTHY }
	starting := func(tk *api.Task) { tk.Status.Health = api.TaskHealth_TASK_HEALTH_STARTING }
	tests := []struct {
		name string
		old  *api.Task
		want []string
	}{
		{"failed unhealthy after a long run", newTask(1, failed, withID("old"), unhealthy, ranFor(time.Hour)),
			[]string{"create slot=1 restarts=1 step=0 delay=0s", "update old desired=shutdown"}},
		{"failed unhealthy soon after the start", newTask(1, failed, withID("old"), unhealthy, ranFor(3*time.Second)),
			[]string{"create slot=1 restarts=1 step=1 delay=100ms", "update old desired=shutdown"}},
		{"running, starting its check", newTask(1, running, withID("old"), starting), nil},
		{"running, unhealthy", newTask(1, running, withID("old"), unhealthy), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Reconcile(now, Config{}, newService(1), []*api.Task{tt.old}, testNodes())
			if got := describe(p); !slices.Equal(got, tt.want) {
				t.Fatalf("plan:\n  got  %q\n  want %q", got, tt.want)
			}
		})
	}
}
