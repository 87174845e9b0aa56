package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/lab"
)

// The rolling update benchmark's service.
const (
	updateReplicas = 10
	// echoV2 is the echo image under a second name, so that an update
	// changes every task's image.
	echoV2 = "shoal.test/echo:v2"
	// swarmUpdate10 is what Docker Swarm 20.10 takes, on this kind of
	// machine, to update 10 replicas one at a time (default settings):
	// a reference, not measured here.
	swarmUpdate10 = 25 * time.Second
)

// BenchmarkRollingUpdate measures rolling updates of a 10-replica service
// published on the routing mesh of a lab (1 manager, 2 workers), one slot
// at a time without delay, stop-first and start-first: the time from the
// update (or rollback) call until every slot runs a task of the new spec.
// The baseline, in the same run, is raw containerd doing the same
// container work one slot at a time (start the new container, stop and
// delete the old one, in the order's order). A last start-first update
// runs while a client sends requests through the mesh; failed ones are
// reported (the goal is 0).
func BenchmarkRollingUpdate(b *testing.B) {
	ctx := context.Background()
	l, bin := benchLab(b, 1, 2, echoV2)
	client, err := l.AddClient()
	if err != nil {
		b.Fatal(err)
	}
	c, closer, err := l.Client("manager1")
	if err != nil {
		b.Fatal(err)
	}
	defer closer.Close()
	w1, _ := l.Node("worker1")

	spec := &api.ServiceSpec{
		Name:     "web",
		Task:     &api.TaskSpec{Container: &api.ContainerSpec{Image: tc.Image}},
		Mode:     &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: updateReplicas}},
		Endpoint: &api.EndpointSpec{Ports: []*api.PortConfig{{Protocol: "tcp", Target: 80, Published: 8080, Mode: "ingress"}}},
	}
	if _, err := c.CreateService(ctx, &api.CreateServiceRequest{Spec: spec}); err != nil {
		b.Fatal(err)
	}
	awaitUpdated(b, c)

	image := tc.Image
	other := func() string {
		image = map[string]string{tc.Image: echoV2, echoV2: tc.Image}[image]
		return image
	}
	for _, order := range []api.UpdateOrder{api.UpdateOrder_UPDATE_ORDER_STOP_FIRST, api.UpdateOrder_UPDATE_ORDER_START_FIRST} {
		name := api.UpdateOrderName(order)
		start := time.Now()
		updateImage(b, c, other(), order)
		awaitUpdated(b, c)
		shoal := time.Since(start)
		raw := rawReplace(b, w1.Namespace, updateReplicas, order == api.UpdateOrder_UPDATE_ORDER_START_FIRST)
		b.ReportMetric(shoal.Seconds(), "update10-"+name+"-s")
		b.ReportMetric(raw.Seconds(), "raw10-"+name+"-s")
		b.ReportMetric(shoal.Seconds()/raw.Seconds(), "update10-"+name+"/raw")
		b.ReportMetric(swarmUpdate10.Seconds()/shoal.Seconds(), "swarm25s/update10-"+name)

		start = time.Now()
		if _, err := c.RollbackService(ctx, &api.RollbackServiceRequest{Service: "web"}); err != nil {
			b.Fatal(err)
		}
		awaitUpdated(b, c)
		other()
		back := time.Since(start)
		b.ReportMetric(back.Seconds(), "rollback10-"+name+"-s")
		b.ReportMetric(back.Seconds()/raw.Seconds(), "rollback10-"+name+"/raw")
	}

	// A start-first update again, under load through the mesh (which
	// shares the machine's CPUs, so it is timed apart): no request may
	// fail.
	load := startBenchLoad(b, client, bin, "http://"+w1.Addr.String()+":8080")
	start := time.Now()
	updateImage(b, c, other(), api.UpdateOrder_UPDATE_ORDER_START_FIRST)
	awaitUpdated(b, c)
	b.ReportMetric(time.Since(start).Seconds(), "update10-start-first-loaded-s")
	b.ReportMetric(float64(load.finish(b)), "start-first-failed-req")
}

// updateImage starts the update of web to image, one slot at a time.
func updateImage(b *testing.B, c api.ControlClient, image string, order api.UpdateOrder) {
	ctx := context.Background()
	got, err := c.GetService(ctx, &api.GetServiceRequest{Service: "web"})
	if err != nil {
		b.Fatal(err)
	}
	spec := got.GetService().GetSpec()
	spec.Task.Container.Image = image
	spec.Update = &api.UpdateConfig{Parallelism: 1, Delay: durationpb.New(0), Order: order, Monitor: durationpb.New(api.DefaultUpdateMonitor)}
	spec.Rollback = spec.Update
	if _, err := c.UpdateService(ctx, &api.UpdateServiceRequest{Service: "web", Spec: spec}); err != nil {
		b.Fatal(err)
	}
}

// awaitUpdated waits until every slot of web runs a task of its current
// spec and nothing else is meant to run.
func awaitUpdated(b *testing.B, c api.ControlClient) {
	ctx := context.Background()
	await.Within(b, 3*time.Minute, poll, "every slot updated", func() bool {
		got, err := c.GetService(ctx, &api.GetServiceRequest{Service: "web"})
		if err != nil {
			return false
		}
		resp, err := c.ListTasks(ctx, &api.ListTasksRequest{Service: "web"})
		if err != nil {
			return false
		}
		n := 0
		for _, t := range resp.GetTasks() {
			if t.GetDesiredState() != api.TaskState_TASK_STATE_RUNNING {
				continue
			}
			if t.GetSpecVersion() != got.GetService().GetSpecVersion() || t.GetStatus().GetState() != api.TaskState_TASK_STATE_RUNNING {
				return false
			}
			n++
		}
		return n == updateReplicas
	})
}

// rawReplace makes n containers of the echo image straight through
// containerd (untimed), then replaces each by a new one, one at a time:
// the floor under a rolling update of n slots on this machine.
// startFirst starts a slot's new container before stopping its old one.
func rawReplace(b *testing.B, namespace string, n int, startFirst bool) time.Duration {
	b.Helper()
	ctx, c, img := rawClient(b, namespace)
	defer c.Close()
	start := func(id string) containerd.Container {
		ctr, err := startRaw(ctx, c, img, id)
		if err != nil {
			b.Fatalf("raw containerd: %v", err)
		}
		return ctr
	}
	stop := func(ctr containerd.Container) {
		task, err := ctr.Task(ctx, nil)
		if err != nil {
			b.Fatalf("raw containerd: %v", err)
		}
		exited, err := task.Wait(ctx)
		if err != nil {
			b.Fatalf("raw containerd: %v", err)
		}
		if err := task.Kill(ctx, syscall.SIGTERM); err != nil {
			b.Fatalf("raw containerd: %v", err)
		}
		<-exited
		if _, err := task.Delete(ctx); err != nil {
			b.Fatalf("raw containerd: %v", err)
		}
		if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
			b.Fatalf("raw containerd: %v", err)
		}
	}
	old := make([]containerd.Container, n)
	for i := range old {
		old[i] = start(fmt.Sprintf("raw-old-%d", i))
	}
	var cur []containerd.Container
	t0 := time.Now()
	for i := range old {
		if startFirst {
			cur = append(cur, start(fmt.Sprintf("raw-new-%d", i)))
			stop(old[i])
		} else {
			stop(old[i])
			cur = append(cur, start(fmt.Sprintf("raw-new-%d", i)))
		}
	}
	elapsed := time.Since(t0)
	for _, ctr := range cur {
		stop(ctr)
	}
	return elapsed
}

// benchLoad sends batches of requests from the lab's client to target
// until finished, and counts the failed ones.
type benchLoad struct {
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	failed int
	err    error
}

func startBenchLoad(b *testing.B, client lab.Client, bin, target string) *benchLoad {
	l := &benchLoad{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			cmd := exec.Command(filepath.Join(bin, "shoal-testimage"), "load", "-n", "200", "-c", "4", "-timeout", "3s", target)
			var out bytes.Buffer
			cmd.Stdout = &out
			err := client.Start(cmd)
			if err == nil {
				err = cmd.Wait()
			}
			var rep testimage.LoadReport
			if err == nil {
				err = json.Unmarshal(out.Bytes(), &rep)
			}
			l.mu.Lock()
			l.failed += rep.Failed
			if err != nil {
				l.err = fmt.Errorf("load %s: %v: %s", target, err, out.String())
			}
			l.mu.Unlock()
			if err != nil {
				return
			}
			if rep.Failed > 0 {
				b.Logf("requests failed during the update: %v", rep.Errors)
			}
		}
	}()
	return l
}

func (l *benchLoad) finish(b *testing.B) int {
	close(l.stop)
	<-l.done
	if l.err != nil {
		b.Fatal(l.err)
	}
	return l.failed
}
