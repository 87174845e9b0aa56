package vm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/servicecheck"
	"github.com/shoal-project/shoal/network/attach"
	"github.com/shoal-project/shoal/network/overlay"
)

// The tests of this file run shoald and containerd as systemd runs them,
// after the mesh tests: TestLeave shrinks the cluster and runs last (this
// file sorts after the others, and it is the file's last test).

// containerdDown is how long containerd stays stopped: longer than a
// few heartbeats, so that shoald sees it gone.
const containerdDown = 5 * time.Second

// TestContainerdRestart stops containerd on a worker running a replica of
// the mesh service for a few seconds and starts it again, as a package
// upgrade does. What holds today: every service converges again (each
// running task has its running container, and no container runs for a
// task that is not running), no container is left on the VM for a task
// that does not run, and the mesh answers through every VM from the
// running tasks only. Whether a task outlives the outage (its container
// adopted) or is replaced is logged, not asserted: today's agent takes
// the broken wait on containerd for the task's end and reports it
// failed, so its slot gets a new task (docs/vms.md).
func TestContainerdRestart(t *testing.T) {
	c := vmCluster(t)
	c.deploy(t)
	services := map[string]int{meshService: meshReplicas, hostService: 1, localService: 1, dbService: 2, frontService: 1}
	before := map[string]map[string]*api.Task{}
	for svc, n := range services {
		before[svc] = c.converged(t, svc, servicecheck.Want{Replicas: n})
	}
	withTask := c.perNode(t, before[meshService])
	node := ""
	for _, n := range c.Nodes[1:] {
		if withTask[n.Name] > 0 {
			node = n.Name
		}
	}
	if node == "" {
		t.Fatalf("no worker runs a replica of %s: %v", meshService, withTask)
	}
	ctrs, err := c.Containers(testContext(t), node)
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, ctr := range ctrs {
		pids = append(pids, fmt.Sprint(ctr.PID))
	}
	t0 := time.Now()
	c.MustRun(t, node, "sudo systemctl stop containerd")
	time.Sleep(containerdDown)
	// containerd's shims keep the containers running without it.
	if out, err := c.Run(testContext(t), node, "ps -o pid= -p "+strings.Join(pids, ",")); err != nil || len(strings.Fields(out)) != len(pids) {
		t.Errorf("%s: with containerd stopped, of the container processes %v these run: %q (%v)", node, pids, out, err)
	}
	c.MustRun(t, node, "sudo systemctl start containerd")

	after := map[string]map[string]*api.Task{}
	for _, svc := range slices.Sorted(maps.Keys(services)) {
		after[svc] = c.converged(t, svc, servicecheck.Want{Replicas: services[svc]})
	}
	logf("containerd stopped on %s for %v: every service converged again %.1f s after", node, containerdDown, time.Since(t0).Seconds())
	for _, svc := range slices.Sorted(maps.Keys(services)) {
		for id, task := range before[svc] {
			if c.onNode(t, task) != node {
				continue
			}
			if after[svc][id] != nil {
				t.Logf("%s on %s: adopted after containerd came back", api.TaskName(task), node)
			} else {
				t.Logf("%s on %s: replaced after containerd came back", api.TaskName(task), node)
			}
		}
	}
	// No container is left behind for a task that does not run.
	eventually(t, convergeTimeout, "no container on "+node+" but running tasks'", func(ctx context.Context) (bool, string) {
		out, err := c.Run(ctx, node, "sudo ctr -n "+containerdNamespace+" containers ls -q")
		if err != nil {
			return false, err.Error()
		}
		var stray []string
		for _, id := range strings.Fields(out) {
			if !slices.ContainsFunc(slices.Collect(maps.Values(after)), func(ts map[string]*api.Task) bool { return ts[id] != nil }) {
				stray = append(stray, id)
			}
		}
		return len(stray) == 0, fmt.Sprintf("containers of no running task: %v", stray)
	})
	names := servicecheck.TaskNames(after[meshService])
	for _, n := range c.Nodes {
		rep := c.load(t, fmt.Sprintf("http://%s:%d", n.Addr, meshHTTP), meshRequests)
		servicecheck.ServedOnlyBy(t, "through "+n.Name+" after containerd restarted on "+node, rep, meshRequests, names)
	}
}

// spreadService has one task on each worker, so that the worker that
// leaves runs one.
const (
	spreadService = "spread"
	spreadPort    = 8092
)

// TestLeave: worker2 leaves with `shoald leave`, as its user would. It is
// gone from `node ls`; its shoald stopped (the unit is inactive, not
// restarted); its containers and containerd namespace, its kernel state
// (overlay bridges and VXLAN devices, task interfaces, VIPs, nft tables,
// IPVS services) and its data dir are gone; its replica runs on the other
// worker; and the mesh of manager1 and worker1 sends only to running
// tasks, none on worker2, with no VXLAN endpoint towards it.
func TestLeave(t *testing.T) {
	c := vmCluster(t)
	c.deploy(t)
	const leaver = "worker2"
	var leaverAddr string
	var stay []Node
	for _, n := range c.Nodes {
		if n.Name == leaver {
			leaverAddr = n.Addr
		} else {
			stay = append(stay, n)
		}
	}
	image, err := c.EchoImage(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	c.MustShoalctl(t, "service", "create", "--detach", "--name", spreadService, "--replicas", "2",
		"--constraint", "node.role==worker", "--publish", fmt.Sprintf("%d:80", spreadPort), image)
	spread := c.converged(t, spreadService, servicecheck.Want{Replicas: 2})
	if c.perNode(t, spread)[leaver] == 0 {
		t.Fatalf("%s runs no task of %s: %v", leaver, spreadService, c.perNode(t, spread))
	}
	if state := c.kernelState(t, leaver); len(state) == 0 {
		t.Fatalf("%s has no shoal kernel state before it leaves", leaver)
	}

	out, err := c.Run(testContext(t), leaver, "sudo shoald leave 2>&1")
	if err != nil {
		t.Fatalf("shoald leave on %s: %v\n%s\n%s", leaver, err, out, c.Journal(testContext(t), leaver, 40))
	}
	t.Logf("shoald leave on %s:\n%s", leaver, out)
	nodes, err := c.NodeList(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.GetDescription().GetHostname() == leaver {
			t.Errorf("%s is still in node ls after it left: %v", leaver, n)
		}
	}
	if state, _ := c.Run(testContext(t), leaver, "systemctl is-active shoald"); strings.TrimSpace(state) != "inactive" {
		t.Errorf("%s: shoald.service is %q after leave, want inactive", leaver, strings.TrimSpace(state))
	}
	if left := c.kernelState(t, leaver); len(left) > 0 {
		t.Errorf("leave left kernel state on %s:\n%s", leaver, strings.Join(left, "\n"))
	}
	if out := c.MustRun(t, leaver, "sudo ctr namespaces ls -q"); slices.Contains(strings.Fields(out), containerdNamespace) {
		t.Errorf("leave left the containerd namespace %s on %s", containerdNamespace, leaver)
	}
	if out := c.MustRun(t, leaver, "sudo ls -A /var/lib/shoal 2>/dev/null || true"); strings.TrimSpace(out) != "" {
		t.Errorf("leave left in the data dir of %s:\n%s", leaver, out)
	}

	gone := []string{leaver}
	for svc, n := range map[string]int{spreadService: 2, meshService: meshReplicas} {
		running := c.converged(t, svc, servicecheck.Want{Replicas: n, NotOn: gone, Unseen: gone})
		port := map[string]int{spreadService: spreadPort, meshService: meshHTTP}[svc]
		for _, n := range stay {
			rep := c.load(t, fmt.Sprintf("http://%s:%d", n.Addr, port), meshRequests)
			servicecheck.ServedOnlyBy(t, fmt.Sprintf("%s through %s after %s left", svc, n.Name, leaver), rep, meshRequests, servicecheck.TaskNames(running))
		}
	}
	for _, n := range stay {
		eventually(t, convergeTimeout, n.Name+" forgets "+leaver+"'s VXLAN endpoint", func(ctx context.Context) (bool, string) {
			fdb, err := c.Run(ctx, n.Name, "sudo bridge fdb show")
			return err == nil && !strings.Contains(fdb, "dst "+leaverAddr+" "), fmt.Sprint(fdb, err)
		})
	}
}

// kernelState lists what shoal made in a VM's kernel: overlay bridges and
// VXLAN devices, task interfaces, addresses on lo beside 127.0.0.1 (VIPs),
// nft tables and IPVS services (netagent.Leftovers, seen from outside).
func (c *Cluster) kernelState(t *testing.T, node string) []string {
	t.Helper()
	out := c.MustRun(t, node, "ip -o link show; ip -4 -o addr show dev lo; sudo nft list tables; sudo ipvsadm -Ln")
	var found []string
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 1 && strings.HasSuffix(f[0], ":") && slices.ContainsFunc([]string{overlay.BridgePrefix, overlay.VXLANPrefix, attach.HostVethPrefix}, func(p string) bool { return strings.HasPrefix(f[1], p) }):
			found = append(found, "link "+strings.TrimSuffix(strings.Split(f[1], "@")[0], ":"))
		case len(f) > 3 && f[1] == "lo" && f[2] == "inet" && f[3] != "127.0.0.1/8":
			found = append(found, "address "+f[3]+" on lo")
		case len(f) == 3 && f[0] == "table" && strings.HasPrefix(f[2], "shoal-"):
			found = append(found, "nft table "+f[2])
		case len(f) > 0 && f[0] == "FWM":
			found = append(found, "IPVS service "+line)
		}
	}
	return found
}
