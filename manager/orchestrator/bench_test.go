package orchestrator

import (
	"fmt"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// benchTasks builds a 1,000-replica service's tasks: every slot has a
// running task and a full history of five failed ones; every tenth
// slot's current task has just failed.
func benchTasks(replicas int) []*api.Task {
	tasks := make([]*api.Task, 0, replicas*6)
	for slot := 1; slot <= replicas; slot++ {
		for rc := range 5 {
			tasks = append(tasks, newTask(uint64(slot), failed, withID(fmt.Sprintf("h%d.%d", slot, rc)), restarts(uint64(rc)), desired(shutdown)))
		}
		state := running
		if slot%10 == 0 {
			state = failed
		}
		tasks = append(tasks, newTask(uint64(slot), state, withID(fmt.Sprintf("c%d", slot)), restarts(5)))
	}
	return tasks
}

func BenchmarkReconcile1000Replicas(b *testing.B) {
	const replicas = 1000
	nodes := testNodes()
	tasks := benchTasks(replicas)
	cases := []struct {
		name  string
		svc   *api.Service
		tasks []*api.Task
	}{
		{"fresh", newService(replicas), nil},
		{"restarts", newService(replicas), tasks},
		{"spec-change", newService(replicas, withSpecVersion(2)), tasks},
		{"scale-down-to-10", newService(10), tasks},
		{"deleted", nil, tasks},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p := Reconcile(now, Config{}, c.svc, c.tasks, nodes)
				if p.Empty() {
					b.Fatal("benchmark plan is empty")
				}
			}
		})
	}
	b.Run("steady", func(b *testing.B) {
		svc := newService(replicas)
		steady := apply(tasks, Reconcile(now, Config{}, svc, tasks, nodes), now)
		b.ReportAllocs()
		for b.Loop() {
			if p := Reconcile(now, Config{}, svc, steady, nodes); !p.Empty() {
				b.Fatal("steady state plan is not empty")
			}
		}
	})
}
