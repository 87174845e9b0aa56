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

// Timings of TestContainerdRestart. containerdDown is the outage: three
// heartbeat graces of the VMs, so that a node that cannot keep its session
// through it is marked down and its tasks moved. shoaldRestartAfter is
// when, in the outage, shoald restarts: early enough that its new session
// has to open while containerd is still down, and stay open.
const (
	containerdDown     = 3 * heartbeatGrace
	shoaldRestartAfter = heartbeatGrace
	// afterRestart is how long the test lets pass after containerd came
	// back before it compares: a grace and a status round trip, for a
	// false report to have reached the managers.
	afterRestart = heartbeatGrace + 5*time.Second
	// outlastService runs outlastReplicas tasks on the worker whose
	// containerd goes away.
	outlastService  = "outlast"
	outlastReplicas = 10
)

// TestContainerdRestart: containerd restarts under ten running tasks on a
// worker (a package upgrade), then stops for 30 s, and shoald restarts
// while it is down. The tasks belong to the node, not to containerd's
// daemon: their shims keep them running, and shoald must neither report
// them ended nor replace them. What must hold: the same task IDs of every
// service run afterwards, from the same processes (no restart); the
// node stays in the cluster (shoald opens its session with containerd
// down); no container is left for a task that does not run (no orphan);
// and the mesh answers through every VM from the running tasks only.
func TestContainerdRestart(t *testing.T) {
	c := vmCluster(t)
	c.deploy(t)
	services := map[string]int{meshService: meshReplicas, hostService: 1, localService: 1, dbService: 2, frontService: 1}
	first := map[string]map[string]*api.Task{}
	for svc, n := range services {
		first[svc] = c.converged(t, svc, servicecheck.Want{Replicas: n})
	}
	// A worker with a replica of the mesh service if there is one (the
	// earlier tests leave them where scaling put them); else the first
	// worker, which gets the ten pinned tasks below anyway.
	withTask := c.perNode(t, first[meshService])
	node := c.Nodes[1].Name
	for _, n := range c.Nodes[1:] {
		if withTask[n.Name] > 0 {
			node = n.Name
		}
	}
	image, err := c.EchoImage(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	c.MustShoalctl(t, "service", "create", "--detach", "--name", outlastService, "--replicas", fmt.Sprint(outlastReplicas),
		"--constraint", "node.hostname=="+node, image)
	t.Cleanup(func() { c.Shoalctl(context.Background(), "service", "rm", outlastService) })
	services[outlastService] = outlastReplicas
	before := map[string]map[string]*api.Task{}
	for _, svc := range slices.Sorted(maps.Keys(services)) {
		before[svc] = c.converged(t, svc, servicecheck.Want{Replicas: services[svc]})
	}
	ctrsBefore, err := c.Containers(testContext(t), node)
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, ctr := range ctrsBefore {
		pids = append(pids, fmt.Sprint(ctr.PID))
	}
	if len(ctrsBefore) < outlastReplicas {
		t.Fatalf("%s runs %d containers, want at least %d: %v", node, len(ctrsBefore), outlastReplicas, ctrsBefore)
	}
	// same checks that every service runs the tasks it ran before, each
	// from the container process it had.
	same := func(when string) {
		t.Helper()
		for _, svc := range slices.Sorted(maps.Keys(services)) {
			now := c.converged(t, svc, servicecheck.Want{Replicas: services[svc]})
			if got, want := slices.Sorted(maps.Keys(now)), slices.Sorted(maps.Keys(before[svc])); !slices.Equal(got, want) {
				t.Errorf("%s: %s runs tasks %v, want the same as before %v", when, svc, got, want)
			}
		}
		ctrs, err := c.Containers(testContext(t), node)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(ctrs) != fmt.Sprint(ctrsBefore) {
			t.Errorf("%s: containers on %s %v, want the same processes as before %v", when, node, ctrs, ctrsBefore)
		}
	}

	// 1. A restart, as a package upgrade does it.
	t0 := time.Now()
	c.MustRun(t, node, "sudo systemctl restart containerd")
	time.Sleep(afterRestart)
	same("after containerd restarted")
	logf("containerd restarted on %s under %d containers: the same tasks run (%.1f s)", node, len(ctrsBefore), time.Since(t0).Seconds())

	// 2. An outage, with shoald restarting in it. shoald's unit wants
	// containerd, and would start it: mask it for the outage.
	t0 = time.Now()
	c.MustRun(t, node, "sudo systemctl stop containerd && sudo systemctl mask --runtime containerd")
	t.Cleanup(func() {
		c.Run(context.Background(), node, "sudo systemctl unmask --runtime containerd; sudo systemctl start containerd")
	})
	time.Sleep(shoaldRestartAfter)
	c.MustRun(t, node, "sudo systemctl restart shoald")
	// Its session opens with containerd down: the node is ready, and
	// stays so through the rest of the outage.
	eventually(t, containerdDown-shoaldRestartAfter, node+" ready with containerd down", func(ctx context.Context) (bool, string) {
		return c.nodeReady(ctx, node)
	})
	time.Sleep(time.Until(t0.Add(containerdDown)))
	if ok, why := c.nodeReady(testContext(t), node); !ok {
		t.Errorf("after %v without containerd: %s\n%s", containerdDown, why, c.Journal(testContext(t), node, 40))
	}
	// The shims keep the containers running without containerd.
	if out, err := c.Run(testContext(t), node, "ps -o pid= -p "+strings.Join(pids, ",")); err != nil || len(strings.Fields(out)) != len(pids) {
		t.Errorf("%s: with containerd stopped, of the container processes %v these run: %q (%v)", node, pids, out, err)
	}
	c.MustRun(t, node, "sudo systemctl unmask --runtime containerd && sudo systemctl start containerd")
	time.Sleep(afterRestart)
	same("after the outage")
	logf("containerd stopped on %s for %v, shoald restarted in it: the same tasks run (%.1f s)", node, containerdDown, time.Since(t0).Seconds())

	// No container is left behind for a task that does not run.
	after := map[string]map[string]*api.Task{}
	for _, svc := range slices.Sorted(maps.Keys(services)) {
		after[svc] = c.converged(t, svc, servicecheck.Want{Replicas: services[svc]})
	}
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
		servicecheck.ServedOnlyBy(t, "through "+n.Name+" after containerd's outage on "+node, rep, meshRequests, names)
	}
}

// nodeReady says whether the VM named node is a ready node, and if not
// what it is.
func (c *Cluster) nodeReady(ctx context.Context, node string) (bool, string) {
	nodes, err := c.NodeList(ctx)
	if err != nil {
		return false, err.Error()
	}
	for _, n := range nodes {
		if n.GetDescription().GetHostname() == node {
			st := n.GetStatus()
			return st.GetState() == api.NodeState_NODE_STATE_READY, fmt.Sprintf("%s is %v: %s", node, st.GetState(), st.GetMessage())
		}
	}
	return false, node + " is not in node ls"
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
