package vm

import (
	"bufio"
	"context"
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

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/servicecheck"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/network/lb/ipvs"
	"github.com/shoal-project/shoal/network/lb/nft"
)

// The services the mesh tests share, made once per run (deploy): each
// test finds them as the tests before it left them.
const (
	// meshService publishes the echo image's HTTP port over TCP and UDP
	// (the echo answers datagrams on its HTTP port number) and its TCP
	// echo port, for long-lived connections.
	meshService  = "mesh"
	meshReplicas = 2
	meshHTTP     = 8090
	meshUDP      = 5390
	meshEcho     = 8097
	// hostService publishes mode=host: only its node answers.
	hostService = "hostmode"
	hostPort    = 9090
	// localService publishes traffic=local: the task sees the client.
	localService = "local"
	localPort    = 8091
	// frontService finds dbService by name on userNetwork.
	userNetwork  = "backend"
	userSubnet   = "10.20.0.0/24"
	dbService    = "db"
	frontService = "front"
)

// Sizes of the mesh tests' checks.
const (
	// meshRequests is how many requests a check sends through one VM:
	// with two replicas behind round robin (IPVS) or random choice
	// (nftables), both answer unless the balancer is broken (random
	// misses one of two in 2^-19).
	meshRequests = 20
	// pinnedFlows is how many long-lived TCP connections and UDP flows
	// (fixed source ports) are pinned to backends before one backend is
	// removed: enough that one of them is pinned to it (with random
	// choice, all miss it with probability 2^-5).
	pinnedFlows = 6
	// udpRetries bounds the datagrams a pinned UDP flow may send after
	// its backend was removed before a live one answers: the first may
	// be dropped while the stale entry is expired.
	udpRetries = 3
	// udpTimeout bounds one datagram's answer.
	udpTimeout = 2 * time.Second
	// endedWithin bounds how long a connection to a removed task may stay
	// open: the drain delay (500 ms) and the task's stop, which closes
	// its connections.
	endedWithin = 30 * time.Second
)

var deployment struct {
	once sync.Once
	err  error
}

// deploy makes the services the mesh tests share, once per run, without
// waiting for them (every test waits for what it needs).
func (c *Cluster) deploy(t testing.TB) {
	t.Helper()
	deployment.once.Do(func() {
		ctx := testContext(t)
		image, err := c.EchoImage(ctx)
		if err != nil {
			deployment.err = err
			return
		}
		if c.reuse {
			// A cluster kept from an earlier run (SHOAL_VM_KEEP) has the
			// services it left.
			if deployment.err = c.removeServices(ctx); deployment.err != nil {
				return
			}
		}
		for _, args := range [][]string{
			{"network", "create", "--subnet", userSubnet, userNetwork},
			{"service", "create", "--detach", "--name", meshService, "--replicas", strconv.Itoa(meshReplicas),
				"--publish", fmt.Sprintf("%d:80", meshHTTP), "--publish", fmt.Sprintf("published=%d,target=80,protocol=udp", meshUDP),
				"--publish", fmt.Sprintf("%d:7", meshEcho), image},
			{"service", "create", "--detach", "--name", hostService, "--publish", fmt.Sprintf("mode=host,published=%d,target=80", hostPort), image},
			{"service", "create", "--detach", "--name", localService, "--publish", fmt.Sprintf("published=%d,target=80,traffic=local", localPort), image},
			{"service", "create", "--detach", "--name", dbService, "--replicas", "2", "--network", userNetwork, image},
			{"service", "create", "--detach", "--name", frontService, "--network", userNetwork, image},
		} {
			if _, err := c.Shoalctl(ctx, args...); err != nil {
				deployment.err = err
				return
			}
		}
	})
	if deployment.err != nil {
		t.Fatalf("the mesh tests' services: %v", deployment.err)
	}
}

// removeServices removes the services and the network the tier's tests
// make, where they exist, and waits until the network is gone.
func (c *Cluster) removeServices(ctx context.Context) error {
	for _, svc := range []string{meshService, hostService, localService, dbService, frontService, spreadService, benchService} {
		c.Shoalctl(ctx, "service", "rm", svc) // one that does not exist fails
	}
	for {
		out, err := c.Shoalctl(ctx, "network", "rm", userNetwork)
		if err == nil || strings.Contains(err.Error(), "not found") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("network rm %s: %v: %s", userNetwork, err, out)
		case <-time.After(time.Second):
		}
	}
}

// TestMesh is the routing mesh on the VMs, as a user sees it, with each
// load balancer backend in turn: nftables (shoald restarted with it),
// then auto, which is IPVS there. Published TCP and UDP ports answer on
// every VM from every replica; host mode only where a task runs;
// traffic=local keeps the client's address; a task finds another service
// by name and reaches its tasks through the VIP; a removed backend gets
// no new connection, its long-lived connections end, and its UDP flows
// move to a live backend (moby/moby#30464); scaling, killing and draining
// fail no request and leave no dead backend; with IPVS, its timeouts are
// conntrack's (moby/moby#31208), draining a node fails no request, and a
// restart of shoald on every VM keeps the containers and fails no
// request. The cluster stays with
// auto (IPVS) for the tests after it.
func TestMesh(t *testing.T) {
	c := vmCluster(t)
	c.deploy(t)
	client := c.clientAddr(t)
	for i, backend := range []string{"nftables", "ipvs"} {
		t.Run(backend, func(t *testing.T) {
			c.useLBBackend(t, backend)
			s := &meshSession{c: c, backend: backend, client: client, firstPort: 40000 + 100*i}
			defer s.logsOnFailure(t)
			t.Run("published ports answer on every VM from every replica", s.published)
			t.Run("host mode answers only where a task runs", s.hostMode)
			t.Run("traffic=local keeps the client address", s.trafficLocal)
			t.Run("a task finds another service by name and VIP", s.discovery)
			if backend == "ipvs" {
				t.Run("IPVS timeouts are conntrack's", s.ipvsTimeouts)
			}
			t.Run("a removed backend gets no new connection and loses its flows", s.removedBackend)
			t.Run("scaling up and killing fail no request", s.scaleUpAndKill)
			if backend == "ipvs" {
				// Draining removes backends as scaling down does (under
				// load in both sessions); once, with the default backend,
				// keeps the tier's time.
				t.Run("draining a node fails no request", s.drain)
				t.Run("a restart of shoald keeps containers and fails no request", s.restart)
			}
			t.Run("back to two replicas", func(t *testing.T) {
				c.MustShoalctl(t, "service", "scale", "--detach", fmt.Sprintf("%s=%d", meshService, meshReplicas))
				c.converged(t, meshService, servicecheck.Want{Replicas: meshReplicas})
			})
		})
	}
}

// useLBBackend restarts shoald on every VM with backend (auto for ipvs,
// the VMs' default), unless it runs with it, and checks that the other
// backend's rules are gone.
func (c *Cluster) useLBBackend(t testing.TB, backend string) {
	t.Helper()
	ctx := testContext(t)
	configured := map[string]string{"ipvs": "auto", "nftables": "nftables"}[backend]
	if c.LBBackend != configured {
		t0 := time.Now()
		if err := c.SetLBBackend(ctx, configured); err != nil {
			t.Fatal(err)
		}
		logf("shoald restarted with --lb-backend %s on every VM: %.1f s", configured, time.Since(t0).Seconds())
	}
	for _, n := range c.Nodes {
		got, err := c.NodeLBBackend(ctx, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got != backend {
			t.Fatalf("%s: shoald --lb-backend %s balances with %s, want %s", n.Name, configured, got, backend)
		}
	}
	// The other backend's rules go when shoald starts with this one.
	eventually(t, convergeTimeout, "no rules of the other load balancer", func(ctx context.Context) (bool, string) {
		for _, n := range c.Nodes {
			out, err := c.Run(ctx, n.Name, "sudo nft list tables; sudo ipvsadm -Ln")
			if err != nil {
				return false, err.Error()
			}
			stale := strings.Contains(out, "FWM") || strings.Contains(out, ipvs.DefaultMarkTable)
			if backend == "ipvs" {
				stale = strings.Contains(out, " "+nft.DefaultTable+"\n")
			}
			if stale {
				return false, fmt.Sprintf("%s, balancing with %s:\n%s", n.Name, backend, out)
			}
		}
		return true, ""
	})
}

// MustShoalctl is Shoalctl for a test: it fails the test on error.
func (c *Cluster) MustShoalctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.Shoalctl(testContext(t), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// meshSession is TestMesh with one load balancer backend.
type meshSession struct {
	c       *Cluster
	backend string
	// client is the namespace's address, which tasks see where the mesh
	// keeps it.
	client string
	// firstPort is the first of the fixed source ports of the session's
	// UDP flows (each session its own, so that no flow of the one before
	// is still known to conntrack or IPVS).
	firstPort int
}

func (s *meshSession) logsOnFailure(t *testing.T) {
	if !t.Failed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	ps, _ := s.c.Shoalctl(ctx, "service", "ps", meshService)
	t.Logf("service ps %s:\n%s", meshService, ps)
	for _, n := range s.c.Nodes {
		t.Logf("%s: shoald's log:\n%s", n.Name, s.c.Journal(ctx, n.Name, 60))
		rules, _ := s.c.Run(ctx, n.Name, "sudo ipvsadm -Ln; sudo nft list ruleset")
		t.Logf("%s: IPVS and nftables:\n%s", n.Name, rules)
	}
}

// targets is the URL (or udp:// address) of a published port on every VM.
func (s *meshSession) targets(scheme string, port int) []string {
	var out []string
	for _, n := range s.c.Nodes {
		out = append(out, fmt.Sprintf("%s://%s:%d", scheme, n.Addr, port))
	}
	return out
}

// answering waits until every target answers once: after a restart the
// rules come with the first network view.
func (s *meshSession) answering(t *testing.T, targets []string) {
	t.Helper()
	for _, target := range targets {
		eventually(t, convergeTimeout, target+" answers", func(ctx context.Context) (bool, string) {
			rep, err := testimage.Load(ctx, testimage.LoadConfig{Target: target, Requests: 1, Timeout: udpTimeout, Dial: s.c.Dial})
			return err == nil && rep.OK == 1, fmt.Sprint(err, rep.Errors)
		})
	}
}

func (s *meshSession) published(t *testing.T) {
	c := s.c
	running := c.converged(t, meshService, servicecheck.Want{Replicas: meshReplicas})
	names := servicecheck.TaskNames(running)
	s.answering(t, append(s.targets("http", meshHTTP), s.targets("udp", meshUDP)...))
	withTask := c.perNode(t, running)
	for _, n := range c.Nodes {
		what := fmt.Sprintf("%s (%d replicas there)", n.Name, withTask[n.Name])
		rep := c.load(t, fmt.Sprintf("http://%s:%d", n.Addr, meshHTTP), meshRequests)
		servicecheck.ServedOnlyBy(t, "TCP through "+what, rep, meshRequests, names)
		if rep.Remotes[s.client] > 0 {
			t.Errorf("TCP through %s: a task saw the client's address %s; the mesh must masquerade: %v", what, s.client, rep.Remotes)
		}
		rep = c.load(t, fmt.Sprintf("udp://%s:%d", n.Addr, meshUDP), meshRequests)
		servicecheck.ServedOnlyBy(t, "UDP through "+what, rep, meshRequests, names)
	}
	if !slices.ContainsFunc(c.Nodes, func(n Node) bool { return withTask[n.Name] == 0 }) {
		t.Logf("every VM runs a replica (%v): no VM without one was covered", withTask)
	}
}

// onlyOn checks that a published port answers, with the client's
// address, on the VM running the service's only task, and nowhere else.
func (s *meshSession) onlyOn(t *testing.T, service string, port int) {
	c := s.c
	running := c.converged(t, service, servicecheck.Want{Replicas: 1})
	var node string
	for _, task := range running {
		node = c.onNode(t, task)
	}
	for _, n := range c.Nodes {
		target := fmt.Sprintf("http://%s:%d", n.Addr, port)
		if n.Name != node {
			rep, _ := testimage.Load(testContext(t), testimage.LoadConfig{Target: target, Requests: 2, Concurrency: 2, Timeout: udpTimeout, Dial: c.Dial})
			if rep.OK != 0 {
				t.Errorf("%s answered on %s, which runs no task of it: %v", service, n.Name, rep.Tasks)
			}
			continue
		}
		s.answering(t, []string{target})
		rep := c.load(t, target, meshRequests)
		servicecheck.ServedOnlyBy(t, service+" on "+n.Name, rep, meshRequests, servicecheck.TaskNames(running))
		if rep.Remotes[s.client] != meshRequests {
			t.Errorf("%s on %s: the task saw %v, want the client's %s", service, n.Name, rep.Remotes, s.client)
		}
	}
}

func (s *meshSession) hostMode(t *testing.T)     { s.onlyOn(t, hostService, hostPort) }
func (s *meshSession) trafficLocal(t *testing.T) { s.onlyOn(t, localService, localPort) }

func (s *meshSession) discovery(t *testing.T) {
	c := s.c
	db := c.converged(t, dbService, servicecheck.Want{Replicas: 2})
	front := c.converged(t, frontService, servicecheck.Want{Replicas: 1})
	svc, err := c.Service(testContext(t), dbService)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range front {
		t.Logf("%s on %s, %s's tasks on %v", frontService, c.onNode(t, task), dbService, c.perNode(t, db))
		servicecheck.Discovery(t, c.inTask(t, task), svc, db, convergeTimeout)
	}
}

// ipvsTimeouts: IPVS forgets an idle TCP connection when conntrack does,
// not after its own 900 s, which reset long-idle connections through the
// mesh (moby/moby#31208); likewise UDP flows.
func (s *meshSession) ipvsTimeouts(t *testing.T) {
	for _, n := range s.c.Nodes {
		out := s.c.MustRun(t, n.Name, "sudo ipvsadm -L --timeout; cat /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established /proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream")
		var tcp, fin, udp, ctTCP, ctUDP int
		if _, err := fmt.Sscanf(out, "Timeout (tcp tcpfin udp): %d %d %d\n%d\n%d", &tcp, &fin, &udp, &ctTCP, &ctUDP); err != nil {
			t.Fatalf("%s: %v:\n%s", n.Name, err, out)
		}
		if tcp != ctTCP || udp != ctUDP {
			t.Errorf("%s: IPVS timeouts tcp %d s, udp %d s; conntrack's established %d s, UDP stream %d s", n.Name, tcp, udp, ctTCP, ctUDP)
		}
		t.Logf("%s: IPVS timeouts tcp %d s (conntrack %d s), tcpfin %d s, udp %d s (conntrack %d s)", n.Name, tcp, ctTCP, fin, udp, ctUDP)
	}
}

// removedBackend scales the mesh service from two replicas to one under
// load through every VM, with long-lived TCP connections and UDP flows
// from fixed ports pinned to both replicas through one VM, and checks
// what moby/moby#30464 got wrong: no request failed while the replica
// went away; new connections reach only the one left; a long-lived
// connection to it goes on, one to the removed task was ended (not left
// hanging); and a UDP flow that was pinned to the removed task is
// answered by the live one.
func (s *meshSession) removedBackend(t *testing.T) {
	c := s.c
	before := c.converged(t, meshService, servicecheck.Want{Replicas: meshReplicas})
	via := c.Nodes[len(c.Nodes)-1]
	conns := make([]*pinnedConn, pinnedFlows)
	for i := range conns {
		var err error
		if conns[i], err = s.pin(t, fmt.Sprintf("%s:%d", via.Addr, meshEcho)); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
	}
	udpAddr := fmt.Sprintf("%s:%d", via.Addr, meshUDP)
	flows := map[int]string{} // source port: task
	for i := range pinnedFlows {
		port := s.firstPort + i
		task, err := s.c.udpFrom(testContext(t), port, udpAddr)
		if err != nil {
			t.Fatal(err)
		}
		flows[port] = task
	}
	var after map[string]*api.Task
	reps := c.loadWhile(t, s.targets("http", meshHTTP), func() {
		// The flows go on sending meanwhile, as a client that keeps its
		// port does (a resolver): their entries stay alive.
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				for port := range flows {
					s.c.udpFrom(testContext(t), port, udpAddr)
				}
				select {
				case <-stop:
					return
				case <-time.After(udpTimeout):
				}
			}
		}()
		defer func() { close(stop); <-done }()
		c.MustShoalctl(t, "service", "scale", "--detach", meshService+"=1")
		after = c.converged(t, meshService, servicecheck.Want{Replicas: 1})
	})
	for i, rep := range reps {
		if rep.Failed > 0 || rep.OK == 0 {
			t.Errorf("through %s while a replica went away: %d requests failed, %d succeeded: %v", c.Nodes[i].Name, rep.Failed, rep.OK, rep.Errors)
		}
	}
	var live *api.Task
	for _, task := range after {
		live = task
	}
	var gone []string
	for id, task := range before {
		if after[id] == nil {
			gone = append(gone, api.TaskName(task))
		}
	}
	t.Logf("%s: %s is left, %v went", meshService, api.TaskName(live), gone)
	for _, n := range c.Nodes {
		rep := c.load(t, fmt.Sprintf("http://%s:%d", n.Addr, meshHTTP), meshRequests)
		servicecheck.ServedOnlyBy(t, "new connections through "+n.Name, rep, meshRequests, []string{api.TaskName(live)})
	}

	liveHost := fmt.Sprintf("%s.%d", meshService, live.GetSlot())
	covered := false
	for i, conn := range conns {
		if conn.host == liveHost {
			if err := conn.echo("still there"); err != nil {
				t.Errorf("long-lived connection %d to the live task %s: %v", i, liveHost, err)
			}
			continue
		}
		covered = true
		if err := conn.ended(endedWithin); err != nil {
			t.Errorf("long-lived connection %d to the removed task %s: %v", i, conn.host, err)
		}
	}
	for port, task := range flows {
		if task == api.TaskName(live) {
			continue
		}
		covered = true
		var answers []string
		for range udpRetries {
			got, err := s.c.udpFrom(testContext(t), port, udpAddr)
			if err != nil {
				answers = append(answers, err.Error())
				continue
			}
			answers = append(answers, got)
			break
		}
		if answers[len(answers)-1] != api.TaskName(live) {
			t.Errorf("UDP flow from port %d, pinned to the removed %s: answers %q, want the live %s", port, task, answers, api.TaskName(live))
		}
	}
	if !covered {
		t.Logf("no connection or flow was pinned to the removed task (conns %v, flows %v)", conns, flows)
	}
}

// scaleUpAndKill scales the mesh service from one replica to three under
// load (a new task joins the balancers only once it runs), then kills one
// replica's process and checks that, once it is replaced, the mesh sends
// to the running tasks only.
func (s *meshSession) scaleUpAndKill(t *testing.T) {
	c := s.c
	const replicas = 3
	reps := c.loadWhile(t, s.targets("http", meshHTTP), func() {
		c.MustShoalctl(t, "service", "scale", "--detach", fmt.Sprintf("%s=%d", meshService, replicas))
		c.converged(t, meshService, servicecheck.Want{Replicas: replicas})
	})
	for i, rep := range reps {
		if rep.Failed > 0 {
			t.Errorf("through %s while scaling up: %d of %d requests failed: %v", c.Nodes[i].Name, rep.Failed, rep.OK+rep.Failed, rep.Errors)
		}
	}
	running := c.converged(t, meshService, servicecheck.Want{Replicas: replicas})
	var victim *api.Task
	for _, task := range running {
		victim = task
		break
	}
	node := c.onNode(t, victim)
	cs, err := c.Containers(testContext(t), node)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(cs, func(ctr tc.Container) bool { return ctr.TaskID == victim.GetId() })
	if i < 0 || cs[i].PID == 0 {
		t.Fatalf("no process of %s on %s: %v", api.TaskName(victim), node, cs)
	}
	c.MustRun(t, node, fmt.Sprintf("sudo kill -KILL %d", cs[i].PID))
	eventually(t, convergeTimeout, api.TaskName(victim)+" replaced", func(ctx context.Context) (bool, string) {
		now, why := c.convergedNow(ctx, meshService, servicecheck.Want{Replicas: replicas})
		if now == nil {
			return false, why
		}
		running = now
		return now[victim.GetId()] == nil, "the killed task still counts as running"
	})
	for _, n := range c.Nodes {
		rep := c.load(t, fmt.Sprintf("http://%s:%d", n.Addr, meshHTTP), meshRequests)
		servicecheck.ServedOnlyBy(t, "through "+n.Name+" after a kill", rep, meshRequests, servicecheck.TaskNames(running))
	}
}

// drain drains a VM running a replica under load through every VM; its
// tasks move without a failed request; then it is made active again.
func (s *meshSession) drain(t *testing.T) {
	c := s.c
	running := c.converged(t, meshService, servicecheck.Want{Replicas: 3})
	withTask := c.perNode(t, running)
	var drained string
	for _, n := range c.Nodes[1:] { // a worker: the manager keeps the API answering
		if withTask[n.Name] > 0 {
			drained = n.Name
			break
		}
	}
	if drained == "" {
		t.Fatalf("no worker runs a replica: %v", withTask)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		if _, err := c.Shoalctl(ctx, "node", "update", "--availability", "active", drained); err != nil {
			t.Errorf("make %s active again: %v", drained, err)
		}
	})
	reps := c.loadWhile(t, s.targets("http", meshHTTP), func() {
		c.MustShoalctl(t, "node", "update", "--availability", "drain", drained)
		c.converged(t, meshService, servicecheck.Want{Replicas: 3, NotOn: []string{drained}})
	})
	for i, rep := range reps {
		if rep.Failed > 0 || rep.OK == 0 {
			t.Errorf("through %s while %s drained: %d requests failed, %d succeeded: %v", c.Nodes[i].Name, drained, rep.Failed, rep.OK, rep.Errors)
		}
	}
}

// restart restarts shoald on every VM at once (systemctl restart, as
// SetLBBackend does with the backend it has) under load through every VM:
// no request fails, the same containers run the same tasks afterwards.
func (s *meshSession) restart(t *testing.T) {
	c := s.c
	before := c.converged(t, meshService, servicecheck.Want{Replicas: 3})
	ctrsBefore, err := c.allContainers(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	reps := c.loadWhile(t, s.targets("http", meshHTTP), func() {
		t0 := time.Now()
		if err := c.SetLBBackend(testContext(t), c.LBBackend); err != nil {
			t.Fatal(err)
		}
		logf("systemctl restart shoald on every VM, until each runs again: %.1f s", time.Since(t0).Seconds())
	})
	for i, rep := range reps {
		if rep.Failed > 0 || rep.OK == 0 {
			t.Errorf("through %s while shoald restarted: %d requests failed, %d succeeded: %v", c.Nodes[i].Name, rep.Failed, rep.OK, rep.Errors)
		}
	}
	after := c.converged(t, meshService, servicecheck.Want{Replicas: 3})
	if got, want := slices.Sorted(maps.Keys(after)), slices.Sorted(maps.Keys(before)); !slices.Equal(got, want) {
		t.Errorf("tasks after the restart %v, before %v", got, want)
	}
	ctrsAfter, err := c.allContainers(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	for node, cs := range ctrsBefore {
		if fmt.Sprint(cs) != fmt.Sprint(ctrsAfter[node]) {
			t.Errorf("%s: containers before the restart %v, after %v", node, cs, ctrsAfter[node])
		}
	}
}

// pinnedConn is a long-lived connection to the echo's TCP port through
// the mesh, and the task (hostname) that greeted it.
type pinnedConn struct {
	net.Conn
	r    *bufio.Reader
	host string
}

func (p *pinnedConn) String() string { return p.host }

// pin opens a long-lived connection and reads the task's greeting.
func (s *meshSession) pin(t *testing.T, addr string) (*pinnedConn, error) {
	conn, err := s.c.Dial(testContext(t), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	p := &pinnedConn{Conn: conn, r: bufio.NewReader(conn)}
	conn.SetReadDeadline(time.Now().Add(requestTimeout))
	line, err := p.r.ReadString('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting from %s: %w", addr, err)
	}
	p.host = strings.TrimPrefix(strings.TrimSpace(line), "hostname=")
	return p, nil
}

// echo sends a line and reads it back.
func (p *pinnedConn) echo(line string) error {
	p.SetDeadline(time.Now().Add(requestTimeout))
	if _, err := fmt.Fprintln(p, line); err != nil {
		return err
	}
	got, err := p.r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != line {
		return fmt.Errorf("echoed %q, want %q", got, line)
	}
	return nil
}

// ended checks that the connection was closed by the other end (or
// reset) within d: a read neither hangs nor gets data.
func (p *pinnedConn) ended(d time.Duration) error {
	p.SetReadDeadline(time.Now().Add(d))
	// A write may provoke the reset of a connection nobody holds.
	fmt.Fprintln(p, "anyone?")
	n, err := p.r.Read(make([]byte, 64))
	var ne net.Error
	switch {
	case err == nil:
		return fmt.Errorf("still answers (%d bytes)", n)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("still open after %v: nothing ended it", d)
	}
	return nil
}

// udpFrom sends one datagram to addr from the namespace's port
// localPort and returns the task that answered.
func (c *Cluster) udpFrom(ctx context.Context, localPort int, addr string) (string, error) {
	var conn net.Conn
	err := c.InNetNS(func() error {
		d := net.Dialer{LocalAddr: &net.UDPAddr{Port: localPort}}
		var err error
		conn, err = d.DialContext(ctx, "udp", addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(udpTimeout))
	if _, err := conn.Write([]byte("ping")); err != nil {
		return "", err
	}
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		return "", fmt.Errorf("udp from port %d to %s: %w", localPort, addr, err)
	}
	for field := range strings.FieldsSeq(string(buf[:n])) {
		if task, ok := strings.CutPrefix(field, "task="); ok {
			return task, nil
		}
	}
	return "", fmt.Errorf("udp from port %d to %s: no task in %q", localPort, addr, buf[:n])
}
