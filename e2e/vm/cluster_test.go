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
)

// Bounds of what the tests wait for (see the harness's constants).
const (
	// convergeTimeout bounds a service's tasks starting on emulated VMs.
	convergeTimeout = 3 * time.Minute
	// requestsPerNode is how many requests each node gets: with two
	// replicas behind the mesh, every node must show both of them.
	requestsPerNode = 8
)

// TestNodeList: after `vagrant up`, `shoalctl node ls` on the manager lists
// every VM, Ready and active, the manager as the leader.
func TestNodeList(t *testing.T) {
	c := vmCluster(t)
	ctx := testContext(t)
	table, err := c.Shoalctl(ctx, "node", "ls")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("shoalctl node ls:\n%s", table)
	nodes, err := c.NodeList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*api.Node{}
	for _, n := range nodes {
		byName[n.GetDescription().GetHostname()] = n
	}
	if len(nodes) != len(c.Nodes) {
		t.Errorf("node ls lists %d nodes (%v), want %d", len(nodes), slices.Sorted(maps.Keys(byName)), len(c.Nodes))
	}
	for _, want := range c.Nodes {
		n, ok := byName[want.Name]
		if !ok {
			t.Errorf("%s is not in node ls", want.Name)
			continue
		}
		if got := n.GetStatus().GetState(); got != api.NodeState_NODE_STATE_READY {
			t.Errorf("%s is %v, want Ready", want.Name, got)
		}
		if got := n.GetSpec().GetAvailability(); got != api.NodeAvailability_NODE_AVAILABILITY_ACTIVE {
			t.Errorf("%s is %v, want Active", want.Name, got)
		}
		if addr := n.GetStatus().GetAddr(); !strings.HasPrefix(addr, want.Addr+":") && addr != want.Addr {
			t.Errorf("%s advertises %q, want its private address %s", want.Name, addr, want.Addr)
		}
		role := api.NodeRole_NODE_ROLE_WORKER
		if want.Manager {
			role = api.NodeRole_NODE_ROLE_MANAGER
		}
		if got := n.GetRole(); got != role {
			t.Errorf("%s is a %v, want %v", want.Name, got, role)
		}
	}
	if m := byName[c.Nodes[0].Name]; m != nil && !m.GetManagerStatus().GetLeader() {
		t.Errorf("%s is not the leader", c.Nodes[0].Name)
	}
}

// TestPublishedService: the echo image, loaded on the manager, runs as a
// service of two replicas published on port 8080; every VM answers on its
// own address, the one without a replica too, and every VM's answers come
// from both replicas (the routing mesh).
func TestPublishedService(t *testing.T) {
	c := vmCluster(t)
	ctx := testContext(t)
	image, err := c.EchoImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const service = "web"
	if _, err := c.Shoalctl(ctx, "service", "create", "--name", service, "--replicas", "2", "--publish", "8080:80", "--env", "GREETING=hello", image); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		if _, err := c.Shoalctl(ctx, "service", "rm", service); err != nil {
			t.Errorf("service rm: %v", err)
		}
	})
	defer func() {
		if t.Failed() {
			ps, _ := c.Shoalctl(context.Background(), "service", "ps", service)
			t.Logf("service ps %s:\n%s", service, ps)
			for _, n := range c.Nodes {
				t.Logf("%s: shoald's log:\n%s", n.Name, c.Journal(context.Background(), n.Name, 40))
				lb, _ := c.Run(context.Background(), n.Name, "sudo ipvsadm -Lnc; sudo nft list tables")
				t.Logf("%s: ipvsadm -Lnc; nft list tables:\n%s", n.Name, lb)
			}
		}
	}()

	var running []string
	eventually(t, convergeTimeout, "2 tasks of web running", func(ctx context.Context) (bool, string) {
		out, err := c.Shoalctl(ctx, "service", "ps", "--format", "{{.Name}} {{.CurrentState}}", service)
		if err != nil {
			return false, err.Error()
		}
		running = nil
		for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
			if name, state, ok := strings.Cut(line, " "); ok && strings.HasPrefix(state, "Running") {
				running = append(running, name)
			}
		}
		return len(running) == 2, out
	})

	// Every node, also the one without a replica, until all answer; the
	// failure says which did not.
	answered := map[string]bool{}
	eventually(t, convergeTimeout, "port 8080 answers on every node", func(ctx context.Context) (bool, string) {
		var state []string
		for _, n := range c.Nodes {
			if answered[n.Name] {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			body, err := c.Get(rctx, fmt.Sprintf("http://%s:8080/", n.Addr))
			cancel()
			switch {
			case err != nil:
				state = append(state, fmt.Sprintf("%s (%s): %v", n.Name, n.Addr, err))
			case echoField(body, "service") != service:
				state = append(state, fmt.Sprintf("%s (%s): answered by %q", n.Name, n.Addr, body))
			default:
				answered[n.Name] = true
			}
		}
		return len(state) == 0, strings.Join(state, "; ")
	})

	t.Run("every node answers from both replicas", func(t *testing.T) {
		ctx := testContext(t)
		for _, n := range c.Nodes {
			url := fmt.Sprintf("http://%s:8080/", n.Addr)
			seen := map[string]int{}
			for range requestsPerNode {
				body, err := c.Get(ctx, url)
				if err != nil {
					t.Errorf("%s: %v", n.Name, err)
					continue
				}
				if got := echoField(body, "service"); got != service {
					t.Errorf("%s: answered by service %q, want %q:\n%s", n.Name, got, service, body)
				}
				seen[echoField(body, "task")]++
			}
			if tasks := slices.Sorted(maps.Keys(seen)); len(tasks) != 2 {
				t.Errorf("%s:8080 answered from tasks %v in %d requests, want both replicas (running: %v)", n.Name, seen, requestsPerNode, running)
			} else {
				t.Logf("%s:8080: %v", n.Name, seen)
			}
		}
	})

	t.Run("ipvs holds the published port", func(t *testing.T) {
		for _, n := range c.Nodes {
			backend, err := c.NodeLBBackend(testContext(t), n.Name)
			if err != nil {
				t.Fatal(err)
			}
			if backend != "ipvs" {
				t.Skipf("%s balances with %s", n.Name, backend)
			}
			out := c.MustRun(t, n.Name, "sudo ipvsadm -Ln")
			// A firewall-mark service per frontend, with a real server per
			// replica.
			if !strings.Contains(out, "FWM") || strings.Count(out, "->") < 3 {
				t.Errorf("%s: ipvsadm -Ln shows no service with the two replicas:\n%s", n.Name, out)
			}
		}
	})
}

// TestLBBackendAuto: with --lb-backend auto (the Vagrantfile's default),
// shoald in the VMs, whose kernel has IPVS, balances with IPVS.
func TestLBBackendAuto(t *testing.T) {
	c := vmCluster(t)
	if c.LBBackend != "auto" {
		t.Skipf("the cluster runs with --lb-backend %s (SHOAL_VM_LB_BACKEND)", c.LBBackend)
	}
	for _, n := range c.Nodes {
		opts := c.MustRun(t, n.Name, "sudo cat /etc/default/shoald")
		if !strings.Contains(opts, "SHOALD_LB_BACKEND=auto") {
			t.Fatalf("%s runs shoald with other settings than --lb-backend auto:\n%s", n.Name, opts)
		}
		if out := c.MustRun(t, n.Name, "cat /proc/modules"); !strings.Contains(out, "ip_vs ") {
			t.Errorf("%s: the ip_vs module is not loaded", n.Name)
		}
		backend, err := c.NodeLBBackend(testContext(t), n.Name)
		if err != nil {
			t.Fatal(err)
		}
		if backend != "ipvs" {
			t.Errorf("%s: shoald --lb-backend auto chose %s, want ipvs", n.Name, backend)
		}
	}
}

// echoField is a field of the echo image's HTTP answer (key=value lines).
func echoField(body, key string) string {
	for line := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return v
		}
	}
	return ""
}
