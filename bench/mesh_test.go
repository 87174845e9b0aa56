package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/lab"
)

// Sizes of the mesh benchmark's runs.
const (
	meshRequests    = 3000
	meshConcurrency = 8
	meshStreamBytes = 256 << 20
)

// BenchmarkMesh measures the routing mesh against its baseline in the same
// run, on a lab of one manager and two workers with one replica on
// worker1: many short HTTP requests (each on a new connection) and one
// bulk TCP stream from a client on the underlay, (a) through the published
// port of worker2, which has no replica (DNAT, VXLAN to worker1,
// masquerade), and (b) straight to the task's address, routed by worker1
// (the client gets a route to the ingress subnet through it). Ratios are
// mesh / direct: throughput ≥ 0.9 is the goal.
func BenchmarkMesh(b *testing.B) {
	ctx := context.Background()
	l, bin := benchLab(b, 1, 2)
	client, err := l.AddClient()
	if err != nil {
		b.Fatal(err)
	}
	c, closer, err := l.Client("manager1")
	if err != nil {
		b.Fatal(err)
	}
	defer closer.Close()

	spec := &api.ServiceSpec{
		Name: "web",
		Task: &api.TaskSpec{
			Container: &api.ContainerSpec{Image: tc.Image},
			Placement: &api.Placement{Constraints: []string{"node.hostname==worker1"}},
		},
		Mode:     &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}},
		Endpoint: &api.EndpointSpec{Ports: []*api.PortConfig{{Protocol: "tcp", Target: 80, Published: 8080, Mode: "ingress"}, {Protocol: "tcp", Target: 7, Published: 8007, Mode: "ingress"}}},
	}
	if _, err := c.CreateService(ctx, &api.CreateServiceRequest{Spec: spec}); err != nil {
		b.Fatal(err)
	}
	var task *api.Task
	await.Within(b, 2*time.Minute, poll, "web running", func() bool {
		resp, err := c.ListTasks(ctx, &api.ListTasksRequest{Service: "web"})
		if err != nil {
			return false
		}
		for _, t := range resp.GetTasks() {
			if t.GetStatus().GetState() == api.TaskState_TASK_STATE_RUNNING && len(t.GetNetworks()) > 0 {
				task = t
				return true
			}
		}
		return false
	})
	taskIP, subnet := "", ""
	for _, a := range task.GetNetworks() {
		taskIP, _, _ = strings.Cut(a.GetAddr(), "/")
		if resp, err := c.GetNetwork(ctx, &api.GetNetworkRequest{Network: a.GetNetworkId()}); err == nil {
			subnet = resp.GetNetwork().GetSubnet()
		}
	}
	w1, _ := l.Node("worker1")
	w2, _ := l.Node("worker2")
	if out, err := exec.Command("ip", "-n", client.Namespace, "route", "add", subnet, "via", w1.Addr.String()).CombinedOutput(); err != nil {
		b.Fatalf("route to %s via worker1: %v %s", subnet, err, out)
	}

	run := func(args ...string) map[string]any {
		cmd := exec.Command(filepath.Join(bin, "shoal-testimage"), args...)
		var out bytes.Buffer
		cmd.Stdout = &out
		if err := client.Start(cmd); err != nil {
			b.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			b.Fatalf("shoal-testimage %v: %v %s", args, err, out.String())
		}
		var m map[string]any
		if err := json.Unmarshal(out.Bytes(), &m); err != nil {
			b.Fatalf("decode %q: %v", out.String(), err)
		}
		return m
	}
	load := func(target string) (rps, p50, p99 float64) {
		m := run("load", "-n", fmt.Sprint(meshRequests), "-c", fmt.Sprint(meshConcurrency), target)
		if ok := m["ok"].(float64); ok != meshRequests {
			b.Fatalf("%s: %v of %d requests succeeded: %v", target, ok, meshRequests, m["errors"])
		}
		elapsed := time.Duration(m["elapsed"].(float64))
		return meshRequests / elapsed.Seconds(), time.Duration(m["p50"].(float64)).Seconds() * 1000, time.Duration(m["p99"].(float64)).Seconds() * 1000
	}
	stream := func(addr string) float64 {
		m := run("stream", "-bytes", fmt.Sprint(meshStreamBytes), addr)
		return meshStreamBytes / (1 << 20) / time.Duration(m["elapsed"].(float64)).Seconds()
	}
	// Warm both paths, then alternate so drift on a shared machine hits
	// both alike.
	load("http://" + w2.Addr.String() + ":8080")
	load("http://" + taskIP + ":80")
	var meshRPS, directRPS, meshP50, directP50, meshP99, directP99, meshMBs, directMBs float64
	const rounds = 2
	for range rounds {
		r, p5, p9 := load("http://" + w2.Addr.String() + ":8080")
		meshRPS, meshP50, meshP99 = meshRPS+r/rounds, meshP50+p5/rounds, meshP99+p9/rounds
		r, p5, p9 = load("http://" + taskIP + ":80")
		directRPS, directP50, directP99 = directRPS+r/rounds, directP50+p5/rounds, directP99+p9/rounds
		meshMBs += stream(w2.Addr.String()+":8007") / rounds
		directMBs += stream(taskIP+":7") / rounds
	}
	// Scaling down under load: with the drain delay, requests through the
	// mesh should not fail while replicas go away.
	b.ReportMetric(float64(scaleDownFailures(b, c, client, bin, "http://"+w2.Addr.String()+":8080")), "scale-down-failed-req")

	b.ReportMetric(meshRPS, "mesh-req/s")
	b.ReportMetric(directRPS, "direct-req/s")
	b.ReportMetric(meshRPS/directRPS, "req-ratio")
	b.ReportMetric(meshP50, "mesh-p50-ms")
	b.ReportMetric(directP50, "direct-p50-ms")
	b.ReportMetric(meshP99, "mesh-p99-ms")
	b.ReportMetric(directP99, "direct-p99-ms")
	b.ReportMetric(meshMBs, "mesh-stream-MB/s")
	b.ReportMetric(directMBs, "direct-stream-MB/s")
	b.ReportMetric(meshMBs/directMBs, "stream-ratio")
}

// scaleDownFailures scales web to 4, then runs requests through target
// while scaling it to 1, and returns how many failed.
func scaleDownFailures(b *testing.B, c api.ControlClient, client lab.Client, bin, target string) int {
	ctx := context.Background()
	scale := func(n uint64) {
		got, err := c.GetService(ctx, &api.GetServiceRequest{Service: "web"})
		if err != nil {
			b.Fatal(err)
		}
		spec := got.GetService().GetSpec()
		spec.Mode = &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: n}}
		if _, err := c.UpdateService(ctx, &api.UpdateServiceRequest{Service: "web", Version: got.GetService().GetMeta().GetVersion(), Spec: spec}); err != nil {
			b.Fatal(err)
		}
		await.Within(b, 2*time.Minute, poll, fmt.Sprintf("%d running", n), func() bool {
			resp, err := c.ListTasks(ctx, &api.ListTasksRequest{Service: "web"})
			if err != nil {
				return false
			}
			running, other := uint64(0), 0
			for _, t := range resp.GetTasks() {
				switch {
				case t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == api.TaskState_TASK_STATE_RUNNING:
					running++
				case !api.IsTerminal(t.GetStatus().GetState()):
					other++
				}
			}
			return running == n && other == 0
		})
	}
	scale(4)
	cmd := exec.Command(filepath.Join(bin, "shoal-testimage"), "load", "-n", "3000", "-c", "4", target)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := client.Start(cmd); err != nil {
		b.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	scale(1)
	if err := cmd.Wait(); err != nil {
		b.Fatalf("load during scale-down: %v %s", err, out.String())
	}
	var rep testimage.LoadReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		b.Fatal(err)
	}
	if rep.Failed > 0 {
		b.Logf("requests failed during scale-down: %v", rep.Errors)
	}
	return rep.Failed
}
