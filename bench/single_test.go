package bench

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	tc "github.com/shoal-project/shoal/internal/testcluster"
)

// poll is how often the benchmarks look for a state; it bounds their
// resolution.
const poll = 5 * time.Millisecond

func running(n *tc.Node) int {
	c := 0
	for _, ctr := range n.Containers() {
		if ctr.Status == "running" {
			c++
		}
	}
	return c
}

// rawContainerd starts n containers of the echo image straight through the
// containerd client, in parallel, and returns how long until all run:
// the floor that any orchestrator on this machine pays.
func rawContainerd(b *testing.B, namespace string, n int) time.Duration {
	b.Helper()
	ctx, c, img := rawClient(b, namespace)
	defer c.Close()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := startRaw(ctx, c, img, fmt.Sprintf("raw-%d-%d", n, i))
			errs <- err
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatalf("raw containerd: %v", err)
		}
	}
	// Clean up (untimed).
	cs, _ := c.Containers(ctx)
	for _, ctr := range cs {
		if !strings.HasPrefix(ctr.ID(), "raw-") {
			continue
		}
		if t, err := ctr.Task(ctx, nil); err == nil {
			t.Delete(ctx, containerd.WithProcessKill)
		}
		ctr.Delete(ctx, containerd.WithSnapshotCleanup)
	}
	return elapsed
}

// rawClient connects to containerd for a raw baseline in namespace and
// finds the echo image there. The caller closes the client.
func rawClient(b *testing.B, namespace string) (context.Context, *containerd.Client, containerd.Image) {
	b.Helper()
	c, err := containerd.New(tc.ContainerdAddress)
	if err != nil {
		b.Fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), namespace)
	img, err := c.GetImage(ctx, tc.Image)
	if err != nil {
		c.Close()
		b.Fatal(err)
	}
	return ctx, c, img
}

// startRaw creates container id of img and starts its process, straight
// through the containerd client.
func startRaw(ctx context.Context, c *containerd.Client, img containerd.Image, id string) (containerd.Container, error) {
	ctr, err := c.NewContainer(ctx, id, containerd.WithImage(img), containerd.WithNewSnapshot(id, img),
		containerd.WithNewSpec(oci.WithImageConfig(img)))
	if err != nil {
		return nil, err
	}
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		return nil, err
	}
	return ctr, task.Start(ctx)
}

func rss(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkSingleNode measures a one-node cluster the way a user meets it.
func BenchmarkSingleNode(b *testing.B) {
	n := tc.NewSingle(b)
	client := n.Client()
	ctx := context.Background()
	time.Sleep(2 * time.Second) // let start-up settle before measuring idle memory
	b.ReportMetric(rss(n.PID()), "shoald-idle-MB")

	for _, replicas := range []int{1, 10, 30} {
		name := fmt.Sprintf("conv%d", replicas)
		start := time.Now()
		n.Ctl("service", "create", "-q", "--name", name, "--replicas", strconv.Itoa(replicas), tc.Image)
		shoal := time.Since(start)
		if replicas == 30 {
			b.ReportMetric(rss(n.PID()), "shoald-30tasks-MB")
		}
		n.Ctl("service", "rm", name)
		await.Within(b, time.Minute, poll, "containers removed", func() bool { return len(n.Containers()) == 0 })
		raw := rawContainerd(b, n.Namespace, replicas)
		b.ReportMetric(shoal.Seconds(), fmt.Sprintf("create%d-s", replicas))
		b.ReportMetric(raw.Seconds(), fmt.Sprintf("raw%d-s", replicas))
		b.ReportMetric(shoal.Seconds()/raw.Seconds(), fmt.Sprintf("create%d/raw", replicas))
	}

	// Replacement of a killed container, several times.
	n.Ctl("service", "create", "-q", "--name", "victim", "--replicas", "1", tc.Image)
	var replace []time.Duration
	for i := 0; i < 5; i++ {
		var victim tc.Container
		for _, c := range n.Containers() {
			if c.Status == "running" {
				victim = c
			}
		}
		start := time.Now()
		syscall.Kill(int(victim.PID), syscall.SIGKILL)
		await.Within(b, time.Minute, poll, "replacement running", func() bool {
			for _, c := range n.Containers() {
				if c.Status == "running" && c.TaskID != victim.TaskID {
					return true
				}
			}
			return false
		})
		replace = append(replace, time.Since(start))
		time.Sleep(11 * time.Second) // past the healthy-run window, so no back-off applies
	}
	sort.Slice(replace, func(i, j int) bool { return replace[i] < replace[j] })
	b.ReportMetric(replace[len(replace)/2].Seconds(), "replace-p50-s")
	b.ReportMetric(raw1(b, n), "raw1-s")

	// Removal of 10 replicas.
	n.Ctl("service", "scale", "victim=10")
	start := time.Now()
	n.Ctl("service", "rm", "victim")
	await.Within(b, time.Minute, poll, "containers removed", func() bool { return len(n.Containers()) == 0 })
	b.ReportMetric(time.Since(start).Seconds(), "rm10-s")

	// Control API write latency: 1,000 label updates (no task change).
	n.Ctl("service", "create", "-q", "--detach", "--name", "api", "--replicas", "0", tc.Image)
	lat := make([]time.Duration, 0, 1000)
	for i := 0; i < 1000; i++ {
		got, err := client.GetService(ctx, &api.GetServiceRequest{Service: "api"})
		if err != nil {
			b.Fatal(err)
		}
		spec := got.GetService().GetSpec()
		spec.Labels = map[string]string{"i": strconv.Itoa(i)}
		t0 := time.Now()
		if _, err := client.UpdateService(ctx, &api.UpdateServiceRequest{Service: "api", Version: got.GetService().GetMeta().GetVersion(), Spec: spec}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[500].Microseconds())/1000, "write-p50-ms")
	b.ReportMetric(float64(lat[990].Microseconds())/1000, "write-p99-ms")
}

// raw1 is the raw containerd time for one container, the floor under a
// replacement.
func raw1(b *testing.B, n *tc.Node) float64 {
	return rawContainerd(b, n.Namespace, 1).Seconds()
}
