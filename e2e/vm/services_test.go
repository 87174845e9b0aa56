package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/servicecheck"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
)

// containerdNamespace is shoald's containerd namespace in the VMs (its
// default, which the unit keeps).
const containerdNamespace = "shoal"

// Tasks is `service ps SERVICE` as the API's tasks.
func (c *Cluster) Tasks(ctx context.Context, service string) ([]*api.Task, error) {
	out, err := c.Shoalctl(ctx, "service", "ps", service, "--format", "json")
	if err != nil {
		return nil, err
	}
	return servicecheck.DecodeLines(out, func() *api.Task { return &api.Task{} })
}

// Service is `service inspect NAME` as the API's service.
func (c *Cluster) Service(ctx context.Context, name string) (*api.Service, error) {
	out, err := c.Shoalctl(ctx, "service", "inspect", name)
	if err != nil {
		return nil, err
	}
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil || len(raw) != 1 {
		return nil, fmt.Errorf("service inspect %s: want one service: %v: %s", name, err, out)
	}
	svc := &api.Service{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw[0], svc); err != nil {
		return nil, fmt.Errorf("service inspect %s: %w", name, err)
	}
	return svc, nil
}

// nodeNames maps node ids to hostnames, which are the VMs' names. The
// ids of VMs do not change while they are nodes: it asks the cluster only
// for an id it does not know yet (or for all when asked to).
func (c *Cluster) nodeNames(ctx context.Context, ids ...string) (map[string]string, error) {
	nodeIDs.Lock()
	defer nodeIDs.Unlock()
	if nodeIDs.names != nil && !slices.ContainsFunc(ids, func(id string) bool { return nodeIDs.names[id] == "" }) {
		return maps.Clone(nodeIDs.names), nil
	}
	nodes, err := c.NodeList(ctx)
	if err != nil {
		return nil, err
	}
	nodeIDs.names = map[string]string{}
	for _, n := range nodes {
		nodeIDs.names[n.GetId()] = n.GetDescription().GetHostname()
	}
	return maps.Clone(nodeIDs.names), nil
}

var nodeIDs struct {
	sync.Mutex
	names map[string]string
}

// Containers lists the processes of the containers of shoald's containerd
// namespace on a VM, as `ctr tasks ls` shows them (a container's id is
// its task's).
func (c *Cluster) Containers(ctx context.Context, node string) ([]tc.Container, error) {
	out, err := c.Run(ctx, node, "sudo ctr -n "+containerdNamespace+" tasks ls")
	if err != nil {
		return nil, err
	}
	var cs []tc.Container
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 3 { // the header
			continue
		}
		pid, _ := strconv.ParseUint(f[1], 10, 32)
		cs = append(cs, tc.Container{ID: f[0], TaskID: f[0], PID: uint32(pid), Status: strings.ToLower(f[2])})
	}
	slices.SortFunc(cs, func(a, b tc.Container) int { return strings.Compare(a.ID, b.ID) })
	return cs, nil
}

// allContainers lists the containers of every VM but those skipped, at
// once, by VM name.
func (c *Cluster) allContainers(ctx context.Context, skip ...string) (map[string][]tc.Container, error) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	out := map[string][]tc.Container{}
	for _, n := range c.Nodes {
		if slices.Contains(skip, n.Name) {
			continue
		}
		wg.Go(func() {
			cs, err := c.Containers(ctx, n.Name)
			mu.Lock()
			defer mu.Unlock()
			out[n.Name] = cs
			errs = append(errs, err)
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// converged waits until a service has reached w (servicecheck.Converged),
// looking at the containers of every VM but w.Unseen, and returns its
// running tasks by id.
func (c *Cluster) converged(t testing.TB, service string, w servicecheck.Want) map[string]*api.Task {
	t.Helper()
	var running map[string]*api.Task
	eventually(t, convergeTimeout, fmt.Sprintf("%d running replicas of %s, none on %v", w.Replicas, service, w.NotOn), func(ctx context.Context) (bool, string) {
		var why string
		running, why = c.convergedNow(ctx, service, w)
		return running != nil, why
	})
	return running
}

// convergedNow is converged's check, once: the running tasks, or why the
// service has not reached w. The listings are made at once.
func (c *Cluster) convergedNow(ctx context.Context, service string, w servicecheck.Want) (map[string]*api.Task, string) {
	var (
		tasks      []*api.Task
		containers map[string][]tc.Container
		errs       [2]error
		wg         sync.WaitGroup
	)
	wg.Go(func() { tasks, errs[0] = c.Tasks(ctx, service) })
	wg.Go(func() { containers, errs[1] = c.allContainers(ctx, w.Unseen...) })
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err.Error()
	}
	var ids []string
	for _, task := range tasks {
		ids = append(ids, task.GetNodeId())
	}
	names, err := c.nodeNames(ctx, ids...)
	if err != nil {
		return nil, err.Error()
	}
	running, why := servicecheck.Converged(tasks, names, containers, w)
	if running == nil {
		ps, _ := c.Shoalctl(ctx, "service", "ps", service)
		return nil, why + "\n" + ps
	}
	return running, ""
}

// onNode is the VM a task runs on, by name.
func (c *Cluster) onNode(t testing.TB, task *api.Task) string {
	t.Helper()
	names, err := c.nodeNames(testContext(t), task.GetNodeId())
	if err != nil {
		t.Fatal(err)
	}
	return names[task.GetNodeId()]
}

// perNode counts tasks by the VM they run on.
func (c *Cluster) perNode(t testing.TB, tasks map[string]*api.Task) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, task := range tasks {
		out[c.onNode(t, task)]++
	}
	return out
}

// inTask runs the echo image's client mode inside a task's container on
// its VM (its mount and network namespaces: the task's interfaces and
// resolv.conf).
func (c *Cluster) inTask(t testing.TB, task *api.Task) servicecheck.InTask {
	t.Helper()
	node := c.onNode(t, task)
	cs, err := c.Containers(testContext(t), node)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(cs, func(ctr tc.Container) bool { return ctr.TaskID == task.GetId() && ctr.PID != 0 })
	if i < 0 {
		t.Fatalf("no process of task %s on %s: %v", task.GetId(), node, cs)
	}
	pid := cs[i].PID
	return func(args ...string) (string, error) {
		out, err := c.Run(testContext(t), node, fmt.Sprintf("sudo nsenter -t %d -n -m /echo %s", pid, shellQuote(args...)))
		return strings.TrimSpace(out), err
	}
}

// load runs requests at target (http://ADDR:PORT or udp://ADDR:PORT) from
// inside the namespace, in this process.
func (c *Cluster) load(t testing.TB, target string, requests int) testimage.LoadReport {
	t.Helper()
	rep, err := testimage.Load(testContext(t), testimage.LoadConfig{Target: target, Requests: requests, Concurrency: loadConcurrency, Timeout: loadTimeout, Dial: c.Dial})
	if err != nil {
		t.Fatalf("load %s: %v", target, err)
	}
	return rep
}

// loadWhile runs requests at each target from inside the namespace for as
// long as change runs, and returns what each saw.
func (c *Cluster) loadWhile(t testing.TB, targets []string, change func()) []testimage.LoadReport {
	t.Helper()
	stop := make(chan struct{})
	reps := make([]testimage.LoadReport, len(targets))
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, target := range targets {
		wg.Go(func() {
			reps[i], errs[i] = testimage.Load(testContext(t), testimage.LoadConfig{Target: target, Concurrency: loadConcurrency, Timeout: loadTimeout, Stop: stop, Dial: c.Dial})
		})
	}
	// However change ends (a failed test), the load stops.
	func() {
		defer close(stop)
		change()
	}()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("load while changing: %v", err)
	}
	return reps
}

// Sizes of the load the mesh tests put on a service.
const (
	// loadConcurrency is how many requests run at once: emulated VMs
	// answer a few dozen a second.
	loadConcurrency = 4
	// loadTimeout bounds one request: a request that takes longer has
	// met a backend that is gone (or a node that dropped it).
	loadTimeout = 5 * time.Second
)

// clientAddr is the namespace's own address on the VMs' private network:
// the client address tasks see when the mesh keeps it.
func (c *Cluster) clientAddr(t testing.TB) string {
	t.Helper()
	var addr string
	err := c.InNetNS(func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if ip, ok := a.(*net.IPNet); ok && strings.HasPrefix(ip.IP.String(), privateNet+".") {
				addr = ip.IP.String()
			}
		}
		return nil
	})
	if err != nil || addr == "" {
		t.Fatalf("the namespace's address on %s.0/24: %q, %v", privateNet, addr, err)
	}
	return addr
}
