package dispatcher

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/manager/store"
)

func overlay(id, subnet string, ingress bool) *api.Network {
	return &api.Network{Id: id, Spec: &api.NetworkSpec{Name: id}, Subnet: subnet, Vni: 4096 + uint32(len(id)), Ingress: ingress}
}

// on is an attachment on network id (the address only needs to differ).
func on(id, addr string) *api.NetworkAttachment {
	return &api.NetworkAttachment{NetworkId: id, Addr: addr, Mac: "02:42:00:00:00:01"}
}

func attachedTask(id, svc, nodeID string, st api.TaskState, ats ...*api.NetworkAttachment) *api.Task {
	t := task(id, nodeID, st)
	t.ServiceId = svc
	t.Networks = ats
	return t
}

func service(id string, ep *api.Endpoint) *api.Service {
	return &api.Service{Id: id, Spec: &api.ServiceSpec{Name: id}, Endpoint: ep}
}

// summary renders a delta for comparison: ids of what is sent and
// removed, peers with their data address and the start of their WireGuard
// key, endpoints with their attachments' networks and serving flag.
func summary(d *api.NetworkDelta) string {
	var b strings.Builder
	ids := func(name string, xs []string) {
		if len(xs) > 0 {
			fmt.Fprintf(&b, "%s%v ", name, xs)
		}
	}
	var nets, peers, eps, svcs []string
	for _, n := range d.GetNetworks() {
		nets = append(nets, n.GetId())
	}
	for _, p := range d.GetPeers() {
		peer := p.GetNodeId() + "@" + p.GetDataAddr()
		if k := p.GetWireguardKey(); len(k) > 0 {
			peer += fmt.Sprintf("/wg:%x", k[:2]) // enough to tell test keys apart
		}
		peers = append(peers, peer)
	}
	for _, e := range d.GetEndpoints() {
		var on []string
		for _, at := range e.GetNetworks() {
			on = append(on, at.GetNetworkId())
		}
		s := e.GetTaskId() + "(" + strings.Join(on, "+") + ")"
		if e.GetServing() {
			s += "*"
		}
		eps = append(eps, s)
	}
	for _, s := range d.GetServices() {
		svcs = append(svcs, s.GetName()+":"+s.GetMode())
	}
	ids("nets", nets)
	ids("-nets", d.GetRemovedNetworks())
	ids("peers", peers)
	ids("-peers", d.GetRemovedPeers())
	ids("eps", eps)
	ids("-eps", d.GetRemovedEndpoints())
	ids("svcs", svcs)
	ids("-svcs", d.GetRemovedServices())
	return strings.TrimSpace(b.String())
}

// TestAssignmentsNetworkView drives node n1's assignment stream through
// changes of the store and checks the network view each message carries:
// whole in the FULL message, then only what changed, in the same message
// as the task changes that caused it. Endpoints marked * are serving.
func TestAssignmentsNetworkView(t *testing.T) {
	const (
		assigned = api.TaskState_TASK_STATE_ASSIGNED
		running  = api.TaskState_TASK_STATE_RUNNING
	)
	r := newRaft(t)
	n2 := node("n2")
	n2.Description = &api.NodeDescription{DataAddr: "192.168.1.2"}
	propose(t, r,
		store.Create(overlay("ing", "10.255.0.0/24", true)),
		store.Create(overlay("apps", "10.20.0.0/24", false)),
		store.Create(overlay("other", "10.30.0.0/24", false)),
		store.Create(joined(node("n1"), "192.168.1.1:4242")), store.Create(n2), store.Create(node("n3")),
		store.Create(service("web", &api.Endpoint{Networks: []string{"apps", "ing"}, Ports: []*api.PortConfig{{Target: 80, Published: 8080, Mode: "ingress"}},
			Vips: []*api.EndpointVIP{{NetworkId: "apps", Addr: "10.20.0.2/24"}, {NetworkId: "ing", Addr: "10.255.0.2/24"}}})),
		store.Create(service("db", &api.Endpoint{Networks: []string{"other"}, Vips: []*api.EndpointVIP{{NetworkId: "other", Addr: "10.30.0.2/24"}}})),
		store.Create(service("mixed", &api.Endpoint{Networks: []string{"other", "ing"}, Ports: []*api.PortConfig{{Target: 53, Published: 53, Mode: "host"}}})),
		store.Create(service("plain", nil)),
		store.Create(attachedTask("w1", "web", "n1", running, on("apps", "10.20.0.3/24"), on("ing", "10.255.0.3/24"))),
		store.Create(attachedTask("w2", "web", "n2", running, on("apps", "10.20.0.4/24"), on("ing", "10.255.0.4/24"))),
		store.Create(attachedTask("w3", "web", "", api.TaskState_TASK_STATE_PENDING, on("apps", "10.20.0.5/24"), on("ing", "10.255.0.5/24"))),
		store.Create(attachedTask("w0", "web", "n2", api.TaskState_TASK_STATE_FAILED, on("apps", "10.20.0.6/24"), on("ing", "10.255.0.6/24"))),
		store.Create(attachedTask("d1", "db", "n2", running, on("other", "10.30.0.3/24"))),
		store.Create(attachedTask("x1", "mixed", "n2", assigned, on("other", "10.30.0.4/24"), on("ing", "10.255.0.7/24"))),
	)
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	desc := &api.NodeDescription{Hostname: "host-1", DataAddr: "192.168.1.1"}
	sid, _ := openSession(t, c, "n1", desc)
	if got := storedNode(r, "n1").GetDescription(); !proto.Equal(got, desc) {
		t.Fatalf("stored description = %v, want %v (with the data address)", got, desc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	stream, err := c.Assignments(ctx, &api.AssignmentsRequest{SessionId: sid})
	if err != nil {
		t.Fatal(err)
	}
	full, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// db's VIP and d1 are only on "other", which n1 is not on; x1 shows
	// only its ingress address; w3 has no node yet and w0 ended.
	want := "nets[apps ing] peers[n1@192.168.1.1 n2@192.168.1.2] eps[w1(apps+ing)* w2(apps+ing)* x1(ing)] svcs[mixed:vip web:vip]"
	if full.GetType() != api.AssignmentType_ASSIGNMENT_TYPE_FULL || summary(full.GetNetwork()) != want {
		t.Fatalf("FULL message: %v %s\nwant network %s", full.GetType(), summary(full.GetNetwork()), want)
	}
	seq := full.GetResultsIn()

	steps := []struct {
		name    string
		do      func(t *testing.T)
		tasks   []change
		network string
	}{
		{
			name: "own task told to stop leaves the load balancers in the same message",
			do: func(t *testing.T) {
				mutate(t, r, "w1", func(tk *api.Task) { tk.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
			},
			tasks: []change{{upd, "w1"}}, network: "eps[w1(apps+ing)]",
		},
		{
			name: "another node's task told to stop: a message with the view alone",
			do: func(t *testing.T) {
				mutate(t, r, "w2", func(tk *api.Task) { tk.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
			},
			network: "eps[w2(apps+ing)]",
		},
		{
			name: "a change no view depends on sends nothing; a task that ended is removed",
			do: func(t *testing.T) {
				propose(t, r, store.Create(attachedTask("p1", "plain", "n2", running)))
				mutate(t, r, "w2", func(tk *api.Task) { tk.Status.State = api.TaskState_TASK_STATE_SHUTDOWN })
			},
			network: "-eps[w2]",
		},
		{
			name: "own task on a new network brings the network, its endpoints and services",
			do: func(t *testing.T) {
				propose(t, r, store.Create(attachedTask("d2", "db", "n1", assigned, on("other", "10.30.0.5/24"))))
			},
			tasks: []change{{upd, "d2"}}, network: "nets[other] eps[d1(other)* d2(other) x1(other+ing)] svcs[db:vip]",
		},
		{
			name: "task starts serving",
			do: func(t *testing.T) {
				mutate(t, r, "x1", func(tk *api.Task) { tk.Status.State = running })
			},
			network: "eps[x1(other+ing)*]",
		},
		{
			name: "its health check fails: it leaves the load balancers",
			do: func(t *testing.T) {
				mutate(t, r, "x1", func(tk *api.Task) { tk.Status.Health = api.TaskHealth_TASK_HEALTH_UNHEALTHY })
			},
			network: "eps[x1(other+ing)]",
		},
		{
			name: "its health check passes: it serves again",
			do: func(t *testing.T) {
				mutate(t, r, "x1", func(tk *api.Task) { tk.Status.Health = api.TaskHealth_TASK_HEALTH_HEALTHY })
			},
			network: "eps[x1(other+ing)*]",
		},
		{
			name: "node reports a data address",
			do: func(t *testing.T) {
				n := proto.Clone(storedNode(r, "n3")).(*api.Node)
				n.Description = &api.NodeDescription{DataAddr: "192.168.1.3"}
				propose(t, r, store.Update(n))
			},
			network: "peers[n3@192.168.1.3]",
		},
		{
			name: "node removed",
			do: func(t *testing.T) {
				propose(t, r, store.Remove(storedNode(r, "n2")))
			},
			network: "-peers[n2]",
		},
		{
			name: "own task removed: its network goes",
			do: func(t *testing.T) {
				propose(t, r, store.Remove(storedTask(r, "d2")))
			},
			tasks: []change{{rem, "d2"}}, network: "-nets[other] eps[x1(ing)*] -eps[d1 d2] -svcs[db]",
		},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			step.do(t)
			msg, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if msg.GetType() != api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL || msg.GetAppliesTo() != seq || msg.GetResultsIn() != seq+1 {
				t.Fatalf("got %v applies_to %d results_in %d; want INCREMENTAL on %d", msg.GetType(), msg.GetAppliesTo(), msg.GetResultsIn(), seq)
			}
			seq = msg.GetResultsIn()
			if got := changesOf(msg); fmt.Sprint(got) != fmt.Sprint(step.tasks) {
				t.Errorf("task changes = %v, want %v", got, step.tasks)
			}
			if got := summary(msg.GetNetwork()); got != step.network {
				t.Errorf("network delta = %s\nwant            %s", got, step.network)
			}
		})
	}

	// A new stream starts over with the whole view.
	again, err := c.Assignments(ctx, &api.AssignmentsRequest{SessionId: sid})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := again.Recv()
	if err != nil {
		t.Fatal(err)
	}
	want = "nets[apps ing] peers[n1@192.168.1.1 n3@192.168.1.3] eps[w1(apps+ing) x1(ing)*] svcs[mixed:vip web:vip]"
	if got := summary(msg.GetNetwork()); msg.GetType() != api.AssignmentType_ASSIGNMENT_TYPE_FULL || got != want {
		t.Errorf("second stream's first message: %v %s\nwant FULL %s", msg.GetType(), got, want)
	}
}

// TestEndpointServing is the serving rule of the view: a task serves while
// it runs, is meant to, and has passed its health check if it has one.
// Swarm sends traffic to tasks whose check has not passed yet; shoal waits.
func TestEndpointServing(t *testing.T) {
	const (
		running  = api.TaskState_TASK_STATE_RUNNING
		starting = api.TaskState_TASK_STATE_STARTING
		shutdown = api.TaskState_TASK_STATE_SHUTDOWN
	)
	v := netView{networks: map[string]*api.Network{"ing": overlay("ing", "10.255.0.0/24", true)}}
	tests := []struct {
		name    string
		state   api.TaskState
		health  api.TaskHealth
		desired api.TaskState
		want    bool
	}{
		{"running, no health check", running, api.TaskHealth_TASK_HEALTH_UNSPECIFIED, running, true},
		{"running, health check not passed yet", running, api.TaskHealth_TASK_HEALTH_STARTING, running, false},
		{"running and healthy", running, api.TaskHealth_TASK_HEALTH_HEALTHY, running, true},
		{"running and unhealthy", running, api.TaskHealth_TASK_HEALTH_UNHEALTHY, running, false},
		{"healthy, told to stop", running, api.TaskHealth_TASK_HEALTH_HEALTHY, shutdown, false},
		{"starting its container", starting, api.TaskHealth_TASK_HEALTH_UNSPECIFIED, running, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tk := attachedTask("t1", "web", "n1", tc.state, on("ing", "10.255.0.3/24"))
			tk.Status.Health = tc.health
			tk.DesiredState = tc.desired
			e := v.endpointOf(tk)
			if e == nil {
				t.Fatal("no endpoint for a task with a live interface")
			}
			if e.GetServing() != tc.want {
				t.Errorf("serving = %v, want %v", e.GetServing(), tc.want)
			}
		})
	}
}

// TestAssignmentsInParts gives node n1 a network view larger than gRPC's
// default 4 MiB receive limit (30,000 ingress tasks elsewhere, ~150 bytes
// each): the FULL message comes in parts a client with default limits
// reads, which join to the whole view.
func TestAssignmentsInParts(t *testing.T) {
	const tasks = 30000
	// Ids as long as real ones (26 characters), as the sizes above are.
	ing, web, other := api.NewID(), api.NewID(), api.NewID()
	r := newRaft(t)
	propose(t, r, store.Create(overlay(ing, "10.255.0.0/16", true)), store.Create(node("n1")), store.Create(node(other)),
		store.Create(service(web, &api.Endpoint{Networks: []string{ing}, Ports: []*api.PortConfig{{Target: 80, Published: 8080, Mode: "ingress"}}})),
		store.Create(attachedTask("mine", web, "n1", api.TaskState_TASK_STATE_RUNNING, on(ing, "10.255.255.1/16"))))
	var batch []*api.StoreAction
	for i := 0; i < tasks; i++ {
		batch = append(batch, store.Create(attachedTask(api.NewID(), web, other, api.TaskState_TASK_STATE_RUNNING,
			on(ing, fmt.Sprintf("10.255.%d.%d/16", i/250, i%250+2)))))
		if len(batch) == 5000 {
			propose(t, r, batch...)
			batch = nil
		}
	}
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	sid, _ := openSession(t, c, "n1", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.Assignments(ctx, &api.AssignmentsRequest{SessionId: sid})
	if err != nil {
		t.Fatal(err)
	}
	var parts []*api.AssignmentsMessage
	for {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d parts: %v", len(parts), err)
		}
		if msg.GetType() != api.AssignmentType_ASSIGNMENT_TYPE_PART {
			full, err := api.JoinAssignments(parts, msg)
			if err != nil {
				t.Fatal(err)
			}
			if full.GetType() != api.AssignmentType_ASSIGNMENT_TYPE_FULL || len(full.GetNetwork().GetEndpoints()) != tasks+1 || len(full.GetChanges()) != 1 {
				t.Fatalf("joined message: %v with %d endpoints and %d changes, want FULL with %d and 1", full.GetType(), len(full.GetNetwork().GetEndpoints()), len(full.GetChanges()), tasks+1)
			}
			if proto.Size(full) <= 4<<20 || len(parts) < 4 {
				t.Errorf("a %d-byte view in %d parts", proto.Size(full), len(parts)+1)
			}
			return
		}
		parts = append(parts, msg)
	}
}

// wgKey is a test WireGuard public key: 32 bytes of b.
func wgKey(b byte) []byte { return bytes.Repeat([]byte{b}, api.WireGuardKeyLen) }

// TestPeerWireGuardKey follows a node's WireGuard key to another node's
// assignment stream: the FULL message carries it in the node's peer entry,
// and when the node opens a new session with a new key (the host rebooted,
// and with it the kernel that held the key), the other node hears of it as
// a peer change; also when the node comes back without one.
func TestPeerWireGuardKey(t *testing.T) {
	r := newRaft(t)
	propose(t, r,
		store.Create(overlay("ing", "10.255.0.0/24", true)),
		store.Create(joined(node("n1"), "192.168.1.1:4242")),
		store.Create(joined(node("n2"), "192.168.1.2:4242")))
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	sid, _ := openSession(t, c, "n1", &api.NodeDescription{Hostname: "host-1", DataAddr: "192.168.1.1"})
	openSession(t, c, "n2", &api.NodeDescription{Hostname: "host-2", DataAddr: "192.168.1.2", WireguardKey: wgKey(0xaa)})

	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	stream, err := c.Assignments(ctx, &api.AssignmentsRequest{SessionId: sid})
	if err != nil {
		t.Fatal(err)
	}
	full, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := summary(full.GetNetwork()), "nets[ing] peers[n1@192.168.1.1 n2@192.168.1.2/wg:aaaa]"; got != want {
		t.Fatalf("FULL message: network %s\nwant %s", got, want)
	}

	openSession(t, c, "n2", &api.NodeDescription{Hostname: "host-2", DataAddr: "192.168.1.2", WireguardKey: wgKey(0xbb)})
	msg, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := summary(msg.GetNetwork()), "peers[n2@192.168.1.2/wg:bbbb]"; msg.GetType() != api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL || got != want {
		t.Fatalf("after n2's new key: %v, network %s\nwant INCREMENTAL, %s", msg.GetType(), got, want)
	}

	openSession(t, c, "n2", &api.NodeDescription{Hostname: "host-2", DataAddr: "192.168.1.2"})
	msg, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := summary(msg.GetNetwork()), "peers[n2@192.168.1.2]"; got != want {
		t.Fatalf("after n2 lost WireGuard: network %s\nwant %s", got, want)
	}
}
