package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	sm "github.com/shoal-project/shoal/internal/servicemodel"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/lab"
)

// The linearizability workload. Small numbers on purpose: a 2-core
// machine runs three managers, their tasks and the checker.
const (
	// linClients is how many clients run at once, spread over the
	// managers (client i talks to manager i mod 3 only).
	linClients = 5
	// linServices are the names the clients fight over.
	linServices = 4
	// linOpTimeout bounds one call. A call that runs out is Unknown:
	// long enough for a write that waits out a leader election (about
	// a second), short enough that a paused manager's clients move on.
	linOpTimeout = 3 * time.Second
	// linThink is the least and linThinkMore the most more a client
	// waits between two calls: some 50 calls a second in all, which keeps
	// the checker's work to seconds.
	linThink     = 20 * time.Millisecond
	linThinkMore = 100 * time.Millisecond
	// linAfterUnknown is how long a client rests after a call whose
	// outcome it could not learn, as a crashed Jepsen client is replaced:
	// each such call stays open to the end of the history and widens the
	// checker's search, and a client that fires at a manager with no
	// leader would make hundreds.
	linAfterUnknown = time.Second
	// linMaxReplicas bounds the replicas a client asks for.
	linMaxReplicas = 2
	// linNowhere is the placement constraint of every service: no node
	// has the label, so tasks are made and scheduled but never placed.
	// The service table is what is checked; thousands of containers
	// started and stopped on two cores would slow the managers down and
	// teach nothing more.
	linNowhere = "node.labels.e2e-linearizability==placed"
	// writeLabel carries the token that makes every write unique.
	writeLabel = "e2e.write"
	// soakEnv, a duration, runs TestLinearizableSoak for that long.
	soakEnv = "SHOAL_SOAK"
)

// TestLinearizableUnderFaults is a Jepsen-style test of the service
// table: clients create, update (scale or change the image), update
// with a version check, remove and read services through all three
// managers of a lab while a nemesis kills, SIGSTOPs and partitions managers
// (nftables drops inside the lab's namespaces). The recorded history
// must be linearizable against internal/servicemodel's model. The
// clients call the Control API once per operation, with no retry of
// their own, so that a retry cannot hide a lost or doubled write; a call
// that fails in a way that leaves its effect unknown is recorded as
// Unknown. This bounded run takes about a minute, lab included.
func TestLinearizableUnderFaults(t *testing.T) {
	runLinearizability(t, 0)
}

// TestLinearizableSoak is the long run for `make soak`: random faults for
// $SHOAL_SOAK (a duration, such as 10m). It is skipped otherwise.
func TestLinearizableSoak(t *testing.T) {
	v := os.Getenv(soakEnv)
	if v == "" {
		t.Skipf("set %s to a duration (make soak does) to run the soak", soakEnv)
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration such as 10m", soakEnv, v)
	}
	runLinearizability(t, d)
}

// runLinearizability runs the workload under the bounded nemesis script
// (soak 0) or under random faults for soak, then checks the history.
func runLinearizability(t *testing.T, soak time.Duration) {
	c := newLabCluster(t, 3, 0, echoV2)
	c.logsOnFailure(t)
	f := newFaults(t, c)
	managers := c.names(lab.RoleManager)
	h := sm.NewHistory()

	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	// Also when the nemesis fails the test: no client outlives it.
	t.Cleanup(func() {
		stop()
		wg.Wait()
	})
	clients := make([]*linClient, linClients)
	for i := range clients {
		clients[i] = newLinClient(t, c, i, managers[i%len(managers)], h)
		wg.Go(func() { clients[i].run(ctx) })
	}
	n := &nemesis{t: t, c: c, f: f, managers: managers, start: time.Now()}
	if soak > 0 {
		n.random(soak)
	} else {
		n.script()
	}
	if err := f.healAll(); err != nil {
		t.Fatal(err)
	}
	// Healed: a leader, every manager Ready; the clients go on a while on
	// a whole cluster, then every manager is read once more.
	tc.Eventually(t, clusterConverge, "a leader and every manager ready after the faults", func() (bool, string) {
		l, err := c.leaderSeenBy()
		if err != nil {
			return false, err.Error()
		}
		nodes, err := c.listNodesVia(l)
		if err != nil {
			return false, err.Error()
		}
		for _, nd := range nodes {
			if nd.GetStatus().GetState() != api.NodeState_NODE_STATE_READY {
				return false, fmt.Sprintf("%s %v", nd.GetDescription().GetHostname(), nd.GetStatus().GetState())
			}
		}
		return true, ""
	})
	n.log("healed")
	time.Sleep(2 * time.Second)
	stop()
	wg.Wait()
	for i, m := range managers {
		final := newLinClient(t, c, linClients+i, m, h)
		for s := range linServices {
			final.read(t.Context(), linServiceName(s))
		}
	}
	invalid := 0
	for _, cl := range clients {
		invalid += cl.invalid
	}
	if invalid > 0 {
		t.Errorf("%d calls were refused as invalid: the workload is wrong (see the log)", invalid)
	}
	checkHistory(t, h, soak)
}

// checkHistory checks the recorded history against the model and, when it
// is not linearizable, whether the writes alone are, which tells stale
// reads from lost or doubled writes.
func checkHistory(t *testing.T, h *sm.History, soak time.Duration) {
	counts := h.Counts()
	var summary []string
	for _, k := range sortedKeys(counts) {
		summary = append(summary, fmt.Sprintf("%s %d", k, counts[k]))
	}
	t.Logf("history: %s", strings.Join(summary, ", "))
	if counts["read ok"] < 20 || counts["put ok"]+counts["cas ok"] < 20 || counts["create ok"] == 0 {
		t.Fatalf("too few operations succeeded for the check to mean anything: %s", strings.Join(summary, ", "))
	}
	timeout := 30 * time.Second
	if soak > 0 {
		timeout = 10 * time.Minute
	}
	ops := h.Operations()
	began := time.Now()
	res, info, why := sm.Check(ops, timeout)
	t.Logf("checked %d operations in %v: %s", len(ops), time.Since(began).Round(time.Millisecond), res)
	switch res {
	case porcupine.Ok:
		return
	case porcupine.Unknown:
		t.Fatalf("the checker could not decide within %v: shorten the run or lower the concurrency", timeout)
	}
	if dir := os.Getenv(logDirEnv); dir != "" {
		path := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"), "history.html")
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
			if err := porcupine.VisualizePath(sm.Model(), info, path); err == nil {
				t.Logf("the history is drawn in %s", path)
			}
		}
	}
	var writes string
	switch wres, _, wwhy := sm.Check(sm.Writes(ops), timeout); wres {
	case porcupine.Ok:
		writes = "the writes alone are linearizable: reads returned stale or unwritten states"
	case porcupine.Illegal:
		writes = "the writes alone are not linearizable either: a write was lost, doubled or reordered:\n" + wwhy
	default:
		writes = fmt.Sprintf("whether the writes alone are could not be decided within %v", timeout)
	}
	t.Errorf("the history is not linearizable; %s.\n%s", writes, why)
}

func linServiceName(i int) string { return fmt.Sprintf("lin-%d", i) }

// linClient is one client of the workload, bound to one manager's
// Control API socket.
type linClient struct {
	t       *testing.T
	id      int
	manager string
	conn    *grpc.ClientConn
	api     api.ControlClient
	h       *sm.History
	rng     *rand.Rand
	// seq numbers this client's writes for their tokens.
	seq int
	// known is, per service, the last state and meta.version this
	// client saw: a scale keeps the image, an image change keeps the
	// replicas, as a user's would.
	known map[string]knownService
	// invalid counts calls refused as invalid (a bug in the workload).
	invalid int
	// lastUnknown says the last call's outcome is unknown.
	lastUnknown bool
}

type knownService struct {
	state   sm.State
	version uint64
}

func newLinClient(t *testing.T, c *labCluster, id int, manager string, h *sm.History) *linClient {
	t.Helper()
	// Reconnect fast: a killed manager is back within seconds, and
	// gRPC's default backoff would keep its clients away for longer.
	conn, err := grpc.NewClient("unix://"+c.node(t, manager).Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &linClient{
		t: t, id: id, manager: manager, conn: conn, api: api.NewControlClient(conn), h: h,
		rng:   rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano()))),
		known: map[string]knownService{},
	}
}

func (cl *linClient) run(ctx context.Context) {
	for ctx.Err() == nil {
		if !cl.ready(ctx) {
			continue
		}
		name := linServiceName(cl.rng.IntN(linServices))
		switch r := cl.rng.IntN(100); {
		case r < 15:
			cl.create(ctx, name)
		case r < 45:
			cl.read(ctx, name)
		case r < 70:
			cl.put(ctx, name)
		case r < 77:
			cl.remove(ctx, name)
		default:
			// Read, then write only if nothing changed since.
			if cl.read(ctx, name) == sm.OK {
				cl.cas(ctx, name)
			}
		}
		wait := linThink + time.Duration(cl.rng.Int64N(int64(linThinkMore)))
		if cl.lastUnknown {
			wait = linAfterUnknown
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// ready waits a moment for the connection to the manager; calls are made
// only on a connection that is up, so a manager that is down costs no
// Unknown writes (a call that was never sent changed nothing, but the
// client could not prove that from the error).
func (cl *linClient) ready(ctx context.Context) bool {
	s := cl.conn.GetState()
	if s == connectivity.Ready {
		return true
	}
	cl.conn.Connect()
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	cl.conn.WaitForStateChange(wctx, s)
	return false
}

// next is a new state for a write: a scale keeps the image, an image
// change keeps the replicas, of what this client last saw.
func (cl *linClient) next(name string) sm.State {
	cl.seq++
	s := cl.known[name].state
	if s.Image == "" {
		s.Image = tc.Image
	}
	if cl.rng.IntN(2) == 0 {
		s.Replicas = uint64(cl.rng.IntN(linMaxReplicas + 1))
	} else if s.Image == tc.Image {
		s.Image = echoV2
	} else {
		s.Image = tc.Image
	}
	s.Write = fmt.Sprintf("c%d-%d", cl.id, cl.seq)
	return s
}

func linSpec(name string, s sm.State) *api.ServiceSpec {
	return &api.ServiceSpec{
		Name:   name,
		Labels: map[string]string{writeLabel: s.Write},
		Task: &api.TaskSpec{
			Container: &api.ContainerSpec{Image: s.Image},
			Placement: &api.Placement{Constraints: []string{linNowhere}},
		},
		Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: s.Replicas}},
	}
}

func linState(svc *api.Service) sm.State {
	spec := svc.GetSpec()
	return sm.State{
		Exists:   true,
		Replicas: spec.GetReplicated().GetReplicas(),
		Image:    spec.GetTask().GetContainer().GetImage(),
		Write:    spec.GetLabels()[writeLabel],
	}
}

// outcome classifies a call's error. Only answers that say what happened
// are definite; anything else (a timeout, a broken connection, a manager
// that could not reach the leader or lost leadership mid-call) may have
// taken effect.
func (cl *linClient) outcome(op string, err error) sm.Outcome {
	cl.lastUnknown = false
	switch status.Code(err) {
	case codes.OK:
		return sm.OK
	case codes.AlreadyExists:
		return sm.AlreadyExists
	case codes.NotFound:
		return sm.NotFound
	case codes.Aborted:
		return sm.Aborted
	case codes.InvalidArgument:
		cl.invalid++
		cl.t.Logf("client %d: %s refused as invalid: %v", cl.id, op, err)
	}
	cl.lastUnknown = true
	return sm.Unknown
}

func (cl *linClient) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, linOpTimeout)
}

func (cl *linClient) create(ctx context.Context, name string) {
	s := cl.next(name)
	done := cl.h.Call(cl.id, sm.Input{Kind: sm.Create, Service: name, New: s})
	cctx, cancel := cl.call(ctx)
	resp, err := cl.api.CreateService(cctx, &api.CreateServiceRequest{Spec: linSpec(name, s)})
	cancel()
	out := sm.Output{Outcome: cl.outcome("create "+name, err)}
	if out.Outcome == sm.OK {
		out.State = linState(resp.GetService())
		cl.known[name] = knownService{out.State, resp.GetService().GetMeta().GetVersion()}
	}
	done(out)
}

func (cl *linClient) put(ctx context.Context, name string) {
	cl.update(ctx, name, sm.Input{Kind: sm.Put, Service: name, New: cl.next(name)}, 0)
}

func (cl *linClient) cas(ctx context.Context, name string) {
	k := cl.known[name]
	cl.update(ctx, name, sm.Input{Kind: sm.CAS, Service: name, New: cl.next(name), Expect: k.state.Write}, k.version)
}

func (cl *linClient) update(ctx context.Context, name string, in sm.Input, version uint64) {
	done := cl.h.Call(cl.id, in)
	cctx, cancel := cl.call(ctx)
	resp, err := cl.api.UpdateService(cctx, &api.UpdateServiceRequest{Service: name, Version: version, Spec: linSpec(name, in.New)})
	cancel()
	out := sm.Output{Outcome: cl.outcome(fmt.Sprintf("%s %s", in.Kind, name), err)}
	if out.Outcome == sm.OK {
		out.State = linState(resp.GetService())
		cl.known[name] = knownService{out.State, resp.GetService().GetMeta().GetVersion()}
	}
	done(out)
}

func (cl *linClient) remove(ctx context.Context, name string) {
	done := cl.h.Call(cl.id, sm.Input{Kind: sm.Remove, Service: name})
	cctx, cancel := cl.call(ctx)
	_, err := cl.api.RemoveService(cctx, &api.RemoveServiceRequest{Service: name})
	cancel()
	out := sm.Output{Outcome: cl.outcome("remove "+name, err)}
	if out.Outcome == sm.OK {
		delete(cl.known, name)
	}
	done(out)
}

// read reads name; an error that says nothing is recorded as Unknown
// (a read changes nothing, so the checker can ignore it).
func (cl *linClient) read(ctx context.Context, name string) sm.Outcome {
	done := cl.h.Call(cl.id, sm.Input{Kind: sm.Read, Service: name})
	cctx, cancel := cl.call(ctx)
	resp, err := cl.api.GetService(cctx, &api.GetServiceRequest{Service: name})
	cancel()
	out := sm.Output{Outcome: cl.outcome("read "+name, err)}
	if out.Outcome != sm.OK && out.Outcome != sm.NotFound {
		out.Outcome = sm.Unknown
	}
	if out.Outcome == sm.OK {
		out.State = linState(resp.GetService())
		cl.known[name] = knownService{out.State, resp.GetService().GetMeta().GetVersion()}
	}
	done(out)
	return out.Outcome
}

// nemesis injects the faults.
type nemesis struct {
	t        *testing.T
	c        *labCluster
	f        *faults
	managers []string
	start    time.Time
}

func (n *nemesis) log(format string, args ...any) {
	n.t.Logf("nemesis %6.2fs: %s", time.Since(n.start).Seconds(), fmt.Sprintf(format, args...))
}

// leader is the current leader, or a random manager when none is named
// (the nemesis must go on).
func (n *nemesis) leader() string {
	if l, err := n.c.leaderSeenBy(); err == nil {
		return l
	}
	return n.managers[rand.IntN(len(n.managers))]
}

func (n *nemesis) follower() string {
	l := n.leader()
	var out []string
	for _, m := range n.managers {
		if m != l {
			out = append(out, m)
		}
	}
	return out[rand.IntN(len(out))]
}

func (n *nemesis) others(node string) []string {
	var out []string
	for _, m := range n.managers {
		if m != node {
			out = append(out, m)
		}
	}
	return out
}

func (n *nemesis) must(err error) {
	if err != nil {
		n.t.Fatal(err)
	}
}

// kill kills node's shoald, leaves it down for d, and starts it again.
func (n *nemesis) kill(node string, d time.Duration) {
	n.log("kill %s", node)
	n.must(n.c.KillNode(n.t.Context(), node))
	time.Sleep(d)
	n.log("start %s", node)
	n.must(n.c.StartNode(n.t.Context(), node))
	ctx, cancel := context.WithTimeout(n.t.Context(), clusterConverge)
	defer cancel()
	n.must(n.c.WaitReady(ctx, node))
	n.log("%s ready", node)
}

// pause SIGSTOPs node for d.
func (n *nemesis) pause(node string, d time.Duration) {
	n.log("SIGSTOP %s", node)
	n.must(n.f.pause(node))
	time.Sleep(d)
	n.log("SIGCONT %s", node)
	n.must(n.f.resume(node))
}

// partition cuts node off the other managers for d; its clients still
// reach it on its socket.
func (n *nemesis) partition(node string, d time.Duration) {
	n.log("partition %s from %v", node, n.others(node))
	n.must(n.f.drop(node, n.others(node)...))
	time.Sleep(d)
	n.log("heal %s", node)
	n.must(n.f.undrop(node))
}

// script is the bounded run: each kind of fault once, on the leader,
// with quiet spells between. Each outlasts an election (about a second).
func (n *nemesis) script() {
	quiet := func() { time.Sleep(2 * time.Second) }
	quiet()
	n.kill(n.leader(), 3*time.Second)
	quiet()
	n.pause(n.leader(), 4*time.Second)
	quiet()
	n.partition(n.leader(), 5*time.Second)
	quiet()
}

// random injects random faults on random managers for d.
func (n *nemesis) random(d time.Duration) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(2+rand.IntN(4)) * time.Second)
		node := n.follower()
		if rand.IntN(2) == 0 {
			node = n.leader()
		}
		length := time.Duration(2+rand.IntN(7)) * time.Second
		switch rand.IntN(3) {
		case 0:
			n.kill(node, length)
		case 1:
			n.pause(node, length)
		case 2:
			n.partition(node, length)
		}
	}
}
