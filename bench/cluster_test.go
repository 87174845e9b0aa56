package bench

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	tc "github.com/shoal-project/shoal/internal/testcluster"
)

// BenchmarkCluster measures fail-over on a lab cluster of 3 managers and 4
// workers: leader killed → first successful write; worker cut off → all
// its replacements running; 30 replicas over the 4 workers → all running.
func BenchmarkCluster(b *testing.B) {
	ctx := context.Background()
	l, _ := benchLab(b, 3, 4)

	client := func(name string) api.ControlClient {
		c, closer, err := l.Client(name)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { closer.Close() })
		return c
	}
	running := func(c api.ControlClient, service string, not string) int {
		resp, err := c.ListTasks(ctx, &api.ListTasksRequest{Service: service})
		if err != nil {
			return -1
		}
		n := 0
		for _, t := range resp.GetTasks() {
			if t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == api.TaskState_TASK_STATE_RUNNING && t.GetNodeId() != not {
				n++
			}
		}
		return n
	}
	c1 := client("manager1")
	nodes, err := c1.ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil {
		b.Fatal(err)
	}
	ids := map[string]string{}
	for _, n := range nodes.GetNodes() {
		ids[n.GetDescription().GetHostname()] = n.GetId()
		if n.GetRole() == api.NodeRole_NODE_ROLE_MANAGER {
			spec := n.GetSpec()
			spec.Availability = api.NodeAvailability_NODE_AVAILABILITY_DRAIN
			if _, err := c1.UpdateNode(ctx, &api.UpdateNodeRequest{Node: n.GetId(), Spec: spec}); err != nil {
				b.Fatal(err)
			}
		}
	}

	// 30 replicas over 4 workers.
	spec := &api.ServiceSpec{Name: "web", Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: tc.Image}},
		Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 30}}}
	start := time.Now()
	if _, err := c1.CreateService(ctx, &api.CreateServiceRequest{Spec: spec}); err != nil {
		b.Fatal(err)
	}
	await.Within(b, 3*time.Minute, poll, "30 running", func() bool { return running(c1, "web", "") == 30 })
	b.ReportMetric(time.Since(start).Seconds(), "create30-4workers-s")

	// A worker cut off: its tasks run elsewhere.
	var lost []float64
	for _, w := range []string{"worker1", "worker2"} {
		start := time.Now()
		if err := l.SetLinkDown(w); err != nil {
			b.Fatal(err)
		}
		await.Within(b, 2*time.Minute, poll, "replacements running", func() bool { return running(c1, "web", ids[w]) == 30 })
		lost = append(lost, time.Since(start).Seconds())
		if err := l.SetLinkUp(w); err != nil {
			b.Fatal(err)
		}
		if err := l.WaitReady(ctx, w); err != nil {
			b.Fatal(err)
		}
	}
	sort.Float64s(lost)
	b.ReportMetric(lost[0], "worker-lost-min-s")
	b.ReportMetric(lost[len(lost)-1], "worker-lost-max-s")

	// The leader killed: how long until a write works again.
	var failover []float64
	for round := 0; round < 3; round++ {
		leader := ""
		for name, id := range ids {
			resp, err := c1.GetNode(ctx, &api.GetNodeRequest{Node: id})
			if err == nil && resp.GetNode().GetManagerStatus().GetLeader() {
				leader = name
			}
		}
		if leader == "" {
			b.Fatal("no leader")
		}
		survivor := "manager1"
		if leader == survivor {
			survivor = "manager2"
		}
		c := client(survivor)
		start := time.Now()
		if err := l.KillNode(ctx, leader); err != nil {
			b.Fatal(err)
		}
		i := 0
		await.Within(b, time.Minute, poll, "a write after the leader died", func() bool {
			i++
			got, err := c.GetService(ctx, &api.GetServiceRequest{Service: "web"})
			if err != nil {
				return false
			}
			s := got.GetService().GetSpec()
			s.Labels = map[string]string{"round": fmt.Sprint(round, i)}
			_, err = c.UpdateService(ctx, &api.UpdateServiceRequest{Service: "web", Version: got.GetService().GetMeta().GetVersion(), Spec: s})
			return err == nil
		})
		failover = append(failover, time.Since(start).Seconds())
		if err := l.StartNode(ctx, leader); err != nil {
			b.Fatal(err)
		}
		if err := l.WaitReady(ctx); err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second)
	}
	sort.Float64s(failover)
	b.ReportMetric(failover[0], "leader-lost-write-min-s")
	b.ReportMetric(failover[len(failover)-1], "leader-lost-write-max-s")
}
