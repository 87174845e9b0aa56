package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/lab"
	"github.com/shoal-project/shoal/network/overlay"
)

// meshRequests is how many requests the mesh test sends to each node.
const meshRequests = 200

// loadFrom runs `shoal-testimage load` in the lab's client namespace.
func (c *labCluster) loadFrom(t *testing.T, client lab.Client, n int, target string) testimage.LoadReport {
	t.Helper()
	rep, err := c.tryLoad(client, n, target)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// tryLoad is loadFrom without failing the test, for other goroutines.
func (c *labCluster) tryLoad(client lab.Client, n int, target string) (testimage.LoadReport, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", client.Namespace,
		filepath.Join(c.bin, "shoal-testimage"), "load", "-n", fmt.Sprint(n), "-c", "4", "-timeout", "3s", target)
	out, err := cmd.Output()
	if err != nil {
		return testimage.LoadReport{}, fmt.Errorf("load %s from the client: %v\n%s", target, err, out)
	}
	var rep testimage.LoadReport
	if err := json.Unmarshal(out, &rep); err != nil {
		return rep, fmt.Errorf("load %s: decode %q: %v", target, out, err)
	}
	return rep, nil
}

// inTask runs the echo binary's client mode inside a task's container
// (its mount and network namespaces), so that it uses the task's own
// interfaces and resolv.conf.
func inTask(t *testing.T, pid uint32, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	argv := append([]string{"-t", fmt.Sprint(pid), "-n", "-m", "/echo"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", argv...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// taskNames are the names the echo server reports for running tasks
// (SHOAL_TASK_NAME: service.slot.id).
func taskNames(tasks map[string]*api.Task) []string {
	var out []string
	for _, task := range tasks {
		out = append(out, api.TaskName(task))
	}
	slices.Sort(out)
	return out
}

// servedOnlyBy checks that every request succeeded and that the answers
// came from exactly the given tasks.
func servedOnlyBy(t *testing.T, what string, rep testimage.LoadReport, n int, names []string) {
	t.Helper()
	if rep.OK != n || rep.Failed != 0 {
		t.Errorf("%s: %d of %d requests succeeded, %d failed: %v", what, rep.OK, n, rep.Failed, rep.Errors)
	}
	got := sortedKeys(rep.Tasks)
	if !slices.Equal(got, names) {
		t.Errorf("%s: answered by %v (%v), want exactly the running tasks %v", what, got, rep.Tasks, names)
	}
}

// TestRoutingMesh is issue 4's user session on a lab of one manager and
// three workers: a published service answers on every node, including
// nodes without a replica, over TCP and UDP; host mode answers only where
// a task runs; the source-IP mode shows the client's real address; tasks
// find each other by name on a user network; scaling and killing replicas
// never leave a dead backend behind; removing services leaves no task
// interfaces.
func TestRoutingMesh(t *testing.T) {
	c := newLabCluster(t, 1, 3)
	client, err := c.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	m := c.manager(t)
	names := hostnames(c.clusterNodes(t, m))
	addrOf := map[string]string{}
	for _, n := range c.Nodes() {
		addrOf[n.Name] = n.Addr.String()
	}

	// A 2-replica web service published on 8080: every node answers, and
	// both replicas answer through every node.
	c.ctl(t, m, "service", "create", "--name", "web", "--replicas", "2", "--publish", "8080:80", tc.Image)
	running := c.converged(t, "web", want{replicas: 2})
	withTask := perNode(running, names)
	sawEmpty := false
	for _, n := range c.names("") {
		if withTask[n] == 0 {
			sawEmpty = true
		}
		rep := c.loadFrom(t, client, meshRequests, "http://"+addrOf[n]+":8080")
		servedOnlyBy(t, "web through "+n, rep, meshRequests, taskNames(running))
		for remote := range rep.Remotes {
			if remote == client.Addr.String() {
				t.Errorf("web through %s: a task saw the client's address %s; the mesh must masquerade", n, remote)
			}
		}
	}
	if !sawEmpty {
		t.Errorf("every node runs a replica of web (%v): the test did not cover a node without one", withTask)
	}

	// The routing mesh is kernel state: it keeps answering while a node's
	// shoald is down, and after it is back.
	var idle string
	for _, n := range c.names(lab.RoleWorker) {
		if withTask[n] == 0 {
			idle = n
		}
	}
	if idle != "" {
		if err := c.KillNode(t.Context(), idle); err != nil {
			t.Fatal(err)
		}
		rep := c.loadFrom(t, client, 50, "http://"+addrOf[idle]+":8080")
		servedOnlyBy(t, "web through "+idle+" with its shoald killed", rep, 50, taskNames(running))
		if err := c.StartNode(t.Context(), idle); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReady(t.Context(), idle); err != nil {
			t.Fatal(err)
		}
		rep = c.loadFrom(t, client, 50, "http://"+addrOf[idle]+":8080")
		servedOnlyBy(t, "web through "+idle+" after its shoald restarted", rep, 50, taskNames(running))
	}

	// UDP through the mesh (the echo server answers datagrams on its HTTP
	// port number).
	c.ctl(t, m, "service", "create", "--name", "dgram", "--replicas", "1", "--publish", "published=5353,target=80,protocol=udp", tc.Image)
	dgram := c.converged(t, "dgram", want{replicas: 1})
	for _, n := range c.names("") {
		rep := c.loadFrom(t, client, 20, "udp://"+addrOf[n]+":5353")
		if got := sortedKeys(rep.Tasks); rep.OK != 20 || len(got) != 1 || got[0] != hostnameOf(dgram) {
			t.Errorf("udp through %s: %d of 20 answered, by %v, want all by %s: %v", n, rep.OK, got, hostnameOf(dgram), rep.Errors)
		}
	}

	// Host mode: only the node running the task answers, straight to it.
	c.ctl(t, m, "service", "create", "--name", "api", "--replicas", "1", "--publish", "mode=host,published=9000,target=80", tc.Image)
	apiTasks := c.converged(t, "api", want{replicas: 1})
	apiNode := ""
	for _, task := range apiTasks {
		apiNode = names[task.GetNodeId()]
	}
	for _, n := range c.names("") {
		rep := c.loadFrom(t, client, 10, "http://"+addrOf[n]+":9000")
		if n == apiNode {
			servedOnlyBy(t, "host-mode api on "+n, rep, 10, taskNames(apiTasks))
			if rep.Remotes[client.Addr.String()] != 10 {
				t.Errorf("host-mode api on %s: tasks saw %v, want the client's %s", n, rep.Remotes, client.Addr)
			}
		} else if rep.OK != 0 {
			t.Errorf("host-mode api answered on %s, which runs no task of it (%v)", n, rep.Tasks)
		}
	}

	// Source-IP mode: each node sends only to its own tasks, without
	// masquerade, so the task sees the client.
	c.ctl(t, m, "service", "create", "--name", "keep", "--replicas", "1", "--publish", "published=8081,target=80,traffic=local", tc.Image)
	keep := c.converged(t, "keep", want{replicas: 1})
	for _, task := range keep {
		n := names[task.GetNodeId()]
		rep := c.loadFrom(t, client, 10, "http://"+addrOf[n]+":8081")
		servedOnlyBy(t, "source-IP mode on "+n, rep, 10, taskNames(keep))
		if rep.Remotes[client.Addr.String()] != 10 {
			t.Errorf("source-IP mode on %s: tasks saw %v, want the client's %s", n, rep.Remotes, client.Addr)
		}
	}

	// Service discovery on a user network: front resolves db to its VIP
	// and tasks.db to db's task, and reaches db by name.
	c.ctl(t, m, "network", "create", "--subnet", "10.20.0.0/24", "backend")
	c.ctl(t, m, "service", "create", "--name", "db", "--replicas", "2", "--network", "backend", tc.Image)
	c.ctl(t, m, "service", "create", "--name", "front", "--replicas", "1", "--network", "backend", tc.Image)
	db := c.converged(t, "db", want{replicas: 2})
	front := c.converged(t, "front", want{replicas: 1})
	control, closer, err := c.Client(m)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	dbSvc, err := control.GetService(t.Context(), &api.GetServiceRequest{Service: "db"})
	if err != nil {
		t.Fatal(err)
	}
	if vips := dbSvc.GetService().GetEndpoint().GetVips(); len(vips) != 1 {
		t.Fatalf("db: want one VIP, got %v", vips)
	}
	vip, _, _ := strings.Cut(dbSvc.GetService().GetEndpoint().GetVips()[0].GetAddr(), "/")
	var dbIPs []string
	for _, task := range db {
		for _, a := range task.GetNetworks() {
			ip, _, _ := strings.Cut(a.GetAddr(), "/")
			dbIPs = append(dbIPs, ip)
		}
	}
	slices.Sort(dbIPs)
	var frontPID uint32
	for _, task := range front {
		for _, ctr := range c.containers(t, names[task.GetNodeId()]) {
			if ctr.TaskID == task.GetId() {
				frontPID = ctr.PID
			}
		}
	}
	if frontPID == 0 {
		t.Fatal("no container found for front's task")
	}
	tc.Eventually(t, clusterConverge, "front resolves db", func() (bool, string) {
		got, err := inTask(t, frontPID, "resolve", "db")
		return err == nil && got == vip, fmt.Sprintf("resolve db = %q (%v), want the VIP %s", got, err, vip)
	})
	if got, err := inTask(t, frontPID, "resolve", "tasks.db"); err != nil || got != strings.Join(dbIPs, "\n") {
		t.Errorf("resolve tasks.db = %q (%v), want %v", got, err, dbIPs)
	}
	// 30 requests: both tasks answer unless the balancer is broken (a
	// fair one misses one of two with probability 2^-29).
	seen := map[string]bool{}
	for range 30 {
		got, err := inTask(t, frontPID, "get", "http://db/")
		if err != nil {
			t.Fatalf("front GET http://db/: %v: %s", err, got)
		}
		for line := range strings.SplitSeq(got, "\n") {
			if name, ok := strings.CutPrefix(line, "task="); ok {
				seen[name] = true
			}
		}
	}
	if want := taskNames(db); !slices.Equal(sortedKeys(seen), want) {
		t.Errorf("front reached db's tasks %v through the VIP, want %v", sortedKeys(seen), want)
	}

	// Scaling and killing: once a change is applied, no request goes to a
	// task that is gone, and new tasks take their share.
	target := c.names(lab.RoleWorker)[0]
	for _, replicas := range []string{"4", "1", "2"} {
		c.ctl(t, m, "service", "scale", "web="+replicas)
		running = c.converged(t, "web", want{replicas: atoi(t, replicas)})
		rep := c.loadFrom(t, client, meshRequests, "http://"+addrOf[target]+":8080")
		servedOnlyBy(t, "web at "+replicas+" replicas", rep, meshRequests, taskNames(running))
	}
	for id, task := range running {
		node := names[task.GetNodeId()]
		for _, ctr := range c.containers(t, node) {
			if ctr.TaskID == id && ctr.PID != 0 {
				if out, err := exec.Command("kill", "-KILL", fmt.Sprint(ctr.PID)).CombinedOutput(); err != nil {
					t.Fatalf("kill task %s: %v %s", id, err, out)
				}
			}
		}
		break
	}
	tc.Eventually(t, clusterConverge, "the killed replica replaced", func() (bool, string) {
		now := c.converged(t, "web", want{replicas: 2})
		same := 0
		for id := range now {
			if running[id] != nil {
				same++
			}
		}
		return same == 1, fmt.Sprintf("%d of the old tasks still run", same)
	})
	running = c.converged(t, "web", want{replicas: 2})
	rep := c.loadFrom(t, client, meshRequests, "http://"+addrOf[target]+":8080")
	servedOnlyBy(t, "web after a kill", rep, meshRequests, taskNames(running))

	// Removing every service leaves no container and no task interface on
	// any node.
	for _, svc := range []string{"web", "dgram", "api", "keep", "db", "front"} {
		c.ctl(t, m, "service", "rm", svc)
	}
	tc.Eventually(t, clusterConverge, "no containers or task interfaces left", func() (bool, string) {
		for _, n := range c.Nodes() {
			if cs := c.containers(t, n.Name); len(cs) > 0 {
				return false, fmt.Sprintf("%s still has %d containers", n.Name, len(cs))
			}
			out, err := exec.Command("ip", "-n", n.Namespace, "-o", "link", "show").CombinedOutput()
			if err != nil {
				return false, fmt.Sprintf("links of %s: %v %s", n.Name, err, out)
			}
			if strings.Contains(string(out), "shv") {
				return false, fmt.Sprintf("%s still has task veths:\n%s", n.Name, out)
			}
		}
		return true, ""
	})
	// Nor any published port or VIP in any node's load balancer.
	for _, n := range c.Nodes() {
		out, err := exec.Command("ip", "netns", "exec", n.Namespace, "nft", "list", "table", "inet", "shoal-lb").CombinedOutput()
		if err != nil {
			t.Errorf("list the load balancer of %s: %v %s", n.Name, err, out)
			continue
		}
		for _, gone := range []string{"8080", "8081", "5353", "9000", vip} {
			if strings.Contains(string(out), gone) {
				t.Errorf("%s's load balancer still mentions %s after every service was removed:\n%s", n.Name, gone, out)
			}
		}
	}

	// Removing the network removes its bridge and VXLAN device everywhere.
	backend, err := control.GetNetwork(t.Context(), &api.GetNetworkRequest{Network: "backend"})
	if err != nil {
		t.Fatal(err)
	}
	c.ctl(t, m, "network", "rm", "backend")
	bridge := overlay.BridgeName(backend.GetNetwork().GetVni())
	tc.Eventually(t, clusterConverge, "no "+bridge+" on any node", func() (bool, string) {
		for _, n := range c.Nodes() {
			out, err := exec.Command("ip", "-n", n.Namespace, "-o", "link", "show").CombinedOutput()
			if err != nil || strings.Contains(string(out), bridge) || strings.Contains(string(out), overlay.VXLANName(backend.GetNetwork().GetVni())) {
				return false, fmt.Sprintf("%s: %v\n%s", n.Name, err, out)
			}
		}
		return true, ""
	})
}

// hostnameOf is the hostname of a service's only running task, as the
// echo server reports it over UDP (service.slot).
func hostnameOf(tasks map[string]*api.Task) string {
	for _, task := range tasks {
		return fmt.Sprintf("%s.%d", task.GetServiceName(), task.GetSlot())
	}
	return ""
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}
