package scheduler

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// benchCluster builds n nodes the way a real cluster looks: IDs in no
// particular order, two zones, a few nodes drained or down.
func benchCluster(n int) []*api.Node {
	nodes := make([]*api.Node, n)
	for i := range nodes {
		opts := []nodeOpt{label("zone", []string{"eu", "us"}[i%2])}
		switch i % 50 {
		case 7:
			opts = append(opts, drained)
		case 13:
			opts = append(opts, down)
		}
		nodes[i] = node(fmt.Sprintf("%08x", uint32(i)*2654435761), opts...)
	}
	return nodes
}

// benchTasks makes n pending tasks over the given number of services; every
// fourth service is constrained to one zone.
func benchTasks(n, services int) []*api.Task {
	ts := make([]*api.Task, n)
	for i := range ts {
		svc := i % services
		var cs []string
		if svc%4 == 3 {
			cs = []string{"node.labels.zone==eu"}
		}
		ts[i] = pendingTask(fmt.Sprintf("task-%d", i), fmt.Sprintf("service-%d", svc), cs...)
	}
	return ts
}

func benchmarkSchedule(b *testing.B, nodes, tasks int) {
	benchmarkScheduleWith(b, nodes, tasks, func(*api.Task) {})
}

// benchmarkScheduleWith is benchmarkSchedule with every task changed by
// mutate (given limits, say).
func benchmarkScheduleWith(b *testing.B, nodes, tasks int, mutate func(*api.Task)) {
	cluster := benchCluster(nodes)
	for _, n := range cluster {
		capacity(64, 256*gib)(n)
	}
	for _, services := range []int{1, 100, tasks} {
		b.Run(fmt.Sprintf("services=%d", services), func(b *testing.B) {
			pending := benchTasks(tasks, services)
			for _, t := range pending {
				mutate(t)
			}
			b.ReportAllocs()
			var cpu time.Duration
			for range b.N {
				b.StopTimer()
				s := New()
				s.Sync(cluster, nil)
				// Collect the previous round's garbage now, so it is not
				// charged to this round's CPU time.
				runtime.GC()
				before := processCPU()
				b.StartTimer()
				ds := s.Schedule(pending)
				b.StopTimer()
				cpu += processCPU() - before
				if ds[len(ds)-1].NodeID == "" {
					b.Fatalf("task %s unplaced: %s", ds[len(ds)-1].Task.Id, ds[len(ds)-1].Explanation)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(b.N*tasks)/b.Elapsed().Seconds(), "tasks/s")
			if cpu > 0 {
				b.ReportMetric(float64(b.N*tasks)/cpu.Seconds(), "tasks/cpu-s")
			}
		})
	}
}

func BenchmarkSchedule1kNodes10kTasks(b *testing.B)  { benchmarkSchedule(b, 1000, 10000) }
func BenchmarkSchedule1kNodes100kTasks(b *testing.B) { benchmarkSchedule(b, 1000, 100000) }

// BenchmarkSchedule1kNodes10kTasksLimits places tasks that reserve memory
// and spread over the zone label: the preference tree and the limit
// filters instead of the plain spread.
func BenchmarkSchedule1kNodes10kTasksLimits(b *testing.B) {
	benchmarkScheduleWith(b, 1000, 10000, func(t *api.Task) {
		reserving(spreadOver(t, "zone"), 0, 64*mib)
	})
}
