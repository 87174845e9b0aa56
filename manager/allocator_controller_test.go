package manager

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/manager/store"
)

// startManagerWithIngress is startManager with an ingress network on
// subnet, as `shoald init --ingress-subnet` creates it.
func startManagerWithIngress(t *testing.T, subnet string) (*Manager, *api.Network) {
	t.Helper()
	m := startManagerWith(t, testConfig(t.TempDir()), Ingress{Subnet: subnet})
	var ingress *api.Network
	m.State().Store().View(func(tx store.ReadTx) { ingress = tx.NetworkByName(DefaultIngressName) })
	return m, ingress
}

func storedNodeOf(m *Manager, id string) *api.Node {
	var n *api.Node
	m.State().Store().View(func(tx store.ReadTx) { n = tx.Node(id) })
	return n
}

// checkAttachment checks that at is a usable address on network n.
func checkAttachment(t *testing.T, what string, at *api.NetworkAttachment, n *api.Network) netip.Addr {
	t.Helper()
	p, err := netip.ParsePrefix(at.GetAddr())
	subnet := netip.MustParsePrefix(n.GetSubnet())
	if err != nil || p.Bits() != subnet.Bits() || !subnet.Contains(p.Addr()) || p.Addr().String() == n.GetGateway() {
		t.Fatalf("%s: address %q is not a host address of %s's %s", what, at.GetAddr(), n.GetSpec().GetName(), subnet)
	}
	if at.GetNetworkId() != n.GetId() || !strings.HasPrefix(at.GetMac(), "02:42:") {
		t.Fatalf("%s: attachment %v, want network %s and a 02:42: MAC", what, at, n.GetId())
	}
	return p.Addr()
}

// TestAllocatorAttachesTasksBeforePending checks that every task of a
// service on an overlay with a published port is PENDING only with an
// address on both networks (overlay and ingress), all addresses distinct
// from each other, the VIPs and the node's own ingress address.
func TestAllocatorAttachesTasksBeforePending(t *testing.T) {
	m, ingress := startManagerWithIngress(t, "10.255.0.0/24")
	setNode(t, m, ready)
	h := recordHistory(t, m)
	net, err := m.control.CreateNetwork(context.Background(), &api.CreateNetworkRequest{Spec: &api.NetworkSpec{Name: "apps", Subnet: "10.20.0.0/24"}})
	if err != nil {
		t.Fatal(err)
	}
	apps := net.GetNetwork()
	s := spec("web", 3)
	s.Networks = []string{"apps"}
	s.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{Target: 80, Published: 8080}}}
	svc := createService(t, m, s)

	await.For(t, "3 tasks assigned and the node's ingress address", func() (bool, string) {
		n := 0
		for _, tk := range tasksOf(m, svc.GetId()) {
			if tk.GetStatus().GetState() == api.TaskState_TASK_STATE_ASSIGNED {
				n++
			}
		}
		return n == 3 && storedNodeOf(m, selfID).GetIngress() != nil, fmt.Sprintf("%d assigned, node ingress %v", n, storedNodeOf(m, selfID).GetIngress())
	})
	h.stop()

	used := map[netip.Addr]string{}
	claim := func(a netip.Addr, who string) {
		if other, ok := used[a]; ok {
			t.Errorf("address %s given to %s and %s", a, other, who)
		}
		used[a] = who
	}
	for _, v := range svc.GetEndpoint().GetVips() {
		claim(netip.MustParsePrefix(v.GetAddr()).Addr(), "VIP on "+v.GetNetworkId())
	}
	claim(checkAttachment(t, "node", storedNodeOf(m, selfID).GetIngress(), ingress), "node "+selfID)
	for _, tk := range tasksOf(m, svc.GetId()) {
		for _, v := range h.of(tk.GetId()) {
			st := v.GetStatus().GetState()
			if st == api.TaskState_TASK_STATE_NEW {
				if len(v.GetNetworks()) != 0 {
					t.Errorf("task %s has addresses while NEW", tk.GetId())
				}
				continue
			}
			if len(v.GetNetworks()) != 2 {
				t.Fatalf("task %s is %v with attachments %v, want one on apps and one on ingress", tk.GetId(), st, v.GetNetworks())
			}
		}
		ats := tk.GetNetworks()
		claim(checkAttachment(t, "task "+tk.GetId(), ats[0], apps), "task "+tk.GetId())
		claim(checkAttachment(t, "task "+tk.GetId(), ats[1], ingress), "task "+tk.GetId())
	}
}

// TestAllocationFailureShowsAndTerminalTasksFree runs a service on a tiny
// ingress subnet: the tasks without an address stay NEW and say why; when
// a running one fails, its address is free again and a waiting task takes
// it.
func TestAllocationFailureShowsAndTerminalTasksFree(t *testing.T) {
	// A /29 has 6 host addresses: the gateway, the node and the VIP leave 3.
	m, _ := startManagerWithIngress(t, "10.255.0.0/29")
	setNode(t, m, ready)
	// The node joined before the service: it has its address first (with
	// both in one batch the tasks could take the last one).
	await.For(t, "node ingress address", func() (bool, string) {
		return storedNodeOf(m, selfID).GetIngress() != nil, "none yet"
	})
	s := spec("web", 5)
	s.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{Target: 80}}}
	svc := createService(t, m, s)

	var assigned, stuck []*api.Task
	await.For(t, "3 tasks assigned, 2 NEW saying why", func() (bool, string) {
		assigned, stuck = nil, nil
		for _, tk := range tasksOf(m, svc.GetId()) {
			switch st := tk.GetStatus(); {
			case st.GetState() == api.TaskState_TASK_STATE_ASSIGNED:
				assigned = append(assigned, tk)
			case st.GetState() == api.TaskState_TASK_STATE_NEW && strings.Contains(st.GetErr(), "network allocation failed") &&
				strings.Contains(st.GetErr(), "address on network ingress"):
				stuck = append(stuck, tk)
			}
		}
		return len(assigned) == 3 && len(stuck) == 2, fmt.Sprintf("%d assigned, %d stuck: %v", len(assigned), len(stuck), tasksOf(m, svc.GetId()))
	})
	for _, tk := range stuck {
		if len(tk.GetNetworks()) != 0 {
			t.Errorf("task %s left NEW with addresses %v", tk.GetId(), tk.GetNetworks())
		}
	}

	freed := assigned[0]
	failed := proto.Clone(freed).(*api.Task)
	failed.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_FAILED, Err: "task: non-zero exit (1)", Timestamp: timestamppb.Now()}
	if err := m.State().Propose(context.Background(), store.Update(failed)); err != nil {
		t.Fatal(err)
	}
	addr := freed.GetNetworks()[0].GetAddr()
	await.For(t, "another task takes the failed task's address", func() (bool, string) {
		for _, tk := range tasksOf(m, svc.GetId()) {
			if tk.GetId() != freed.GetId() && tk.GetStatus().GetState() >= api.TaskState_TASK_STATE_PENDING &&
				len(tk.GetNetworks()) == 1 && tk.GetNetworks()[0].GetAddr() == addr {
				return true, ""
			}
		}
		return false, fmt.Sprint(tasksOf(m, svc.GetId()))
	})
	if got := storedTask(m, freed.GetId()).GetNetworks(); len(got) != 1 || got[0].GetAddr() != addr {
		t.Errorf("the failed task's record lost its address: %v", got)
	}
}

// TestNodesGetIngressAddresses checks that every node, including one that
// joins later, gets its own address on ingress.
func TestNodesGetIngressAddresses(t *testing.T) {
	m, ingress := startManagerWithIngress(t, "10.255.0.0/24")
	if err := m.State().Propose(context.Background(), store.Create(&api.Node{Id: "n2", Role: api.NodeRole_NODE_ROLE_WORKER,
		Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN}})); err != nil {
		t.Fatal(err)
	}
	await.For(t, "both nodes with an ingress address", func() (bool, string) {
		return storedNodeOf(m, selfID).GetIngress() != nil && storedNodeOf(m, "n2").GetIngress() != nil,
			fmt.Sprint(storedNodeOf(m, selfID).GetIngress(), storedNodeOf(m, "n2").GetIngress())
	})
	a := checkAttachment(t, "node "+selfID, storedNodeOf(m, selfID).GetIngress(), ingress)
	b := checkAttachment(t, "node n2", storedNodeOf(m, "n2").GetIngress(), ingress)
	if a == b {
		t.Errorf("both nodes have %s", a)
	}
}

func storedTask(m *Manager, id string) *api.Task {
	var tk *api.Task
	m.State().Store().View(func(tx store.ReadTx) { tk = tx.Task(id) })
	return tk
}

// TestConcurrentAllocationsNeverCollide races control calls that allocate
// (service creates and updates with VIPs and published ports, some
// asking for the same port; pooled network creates) against each other
// and against the allocator controller moving the services' tasks from
// NEW to PENDING, and checks that no address, VIP, published port, subnet
// or VNI was handed out twice. Every decision reads the store and
// proposes its result under stored.Allocator's lock; without it, calls
// that read the same store pick the same free address.
func TestConcurrentAllocationsNeverCollide(t *testing.T) {
	const (
		callers     = 8 // goroutines making services
		perCaller   = 4 // services each
		networkers  = 6 // goroutines making one pooled network each
		replicas    = 3
		sharedPorts = 4 // explicit ports, each asked for by callers/sharedPorts services
	)
	m, _ := startManagerWithIngress(t, "10.255.0.0/22")
	ctx := context.Background()
	if _, err := m.control.CreateNetwork(ctx, &api.CreateNetworkRequest{Spec: &api.NetworkSpec{Name: "apps", Subnet: "10.20.0.0/22"}}); err != nil {
		t.Fatal(err)
	}

	start := make(chan struct{})
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		refused   = map[uint32]int{} // explicit port → creates refused for it
		services  []string
		callerErr []error
	)
	fail := func(err error) {
		mu.Lock()
		callerErr = append(callerErr, err)
		mu.Unlock()
	}
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range perCaller {
				s := spec(fmt.Sprintf("svc-%d-%d", c, i), replicas)
				s.Networks = []string{"apps"}
				s.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{Target: 80}}} // picked from 30000-32767
				explicit := uint32(0)
				if i == 0 {
					explicit = uint32(8000 + c%sharedPorts)
					s.Endpoint.Ports = append(s.Endpoint.Ports, &api.PortConfig{Target: 81, Published: explicit})
				}
				resp, err := m.control.CreateService(ctx, &api.CreateServiceRequest{Spec: s})
				if explicit != 0 && status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), "already used by service") {
					mu.Lock()
					refused[explicit]++
					mu.Unlock()
					continue
				}
				if err != nil {
					fail(fmt.Errorf("create %s: %w", s.GetName(), err))
					continue
				}
				svc := resp.GetService()
				mu.Lock()
				services = append(services, svc.GetId())
				mu.Unlock()
				// Scale up: the endpoint is allocated again (it must keep
				// what it has) while others allocate.
				upd := proto.Clone(svc.GetSpec()).(*api.ServiceSpec)
				upd.GetReplicated().Replicas = replicas + 1
				if _, err := m.control.UpdateService(ctx, &api.UpdateServiceRequest{Service: svc.GetId(), Spec: upd}); err != nil {
					fail(fmt.Errorf("update %s: %w", s.GetName(), err))
				}
			}
		}()
	}
	for n := range networkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := m.control.CreateNetwork(ctx, &api.CreateNetworkRequest{Spec: &api.NetworkSpec{Name: fmt.Sprintf("pooled-%d", n)}}); err != nil {
				fail(fmt.Errorf("create network pooled-%d: %w", n, err))
			}
		}()
	}
	close(start)
	wg.Wait()
	for _, err := range callerErr {
		t.Error(err)
	}
	for port := uint32(8000); port < 8000+sharedPorts; port++ {
		if want := callers/sharedPorts - 1; refused[port] != want {
			t.Errorf("explicit port %d: %d creates refused, want %d (one service gets it)", port, refused[port], want)
		}
	}

	// Every snapshot of the store is free of collisions, the one taken
	// while the controller is still at work as much as the last.
	checkNoCollisions(t, m, 2+networkers)
	want := len(services) * (replicas + 1)
	await.For(t, "every task allocated and the node's ingress address", func() (bool, string) {
		n := 0
		m.State().Store().View(func(tx store.ReadTx) {
			for _, tk := range tx.Tasks() {
				if tk.GetStatus().GetState() >= api.TaskState_TASK_STATE_PENDING && len(tk.GetNetworks()) == 2 {
					n++
				}
			}
		})
		return n == want && storedNodeOf(m, selfID).GetIngress() != nil, fmt.Sprintf("%d of %d tasks allocated", n, want)
	})
	checkNoCollisions(t, m, 2+networkers)
}

// checkNoCollisions checks that the store gives no address, VIP,
// published port, subnet or VNI twice, and that it holds wantNets
// networks and every service its two VIPs (apps and ingress).
func checkNoCollisions(t *testing.T, m *Manager, wantNets int) {
	t.Helper()
	var (
		nets  []*api.Network
		svcs  []*api.Service
		tasks []*api.Task
		nodes []*api.Node
	)
	m.State().Store().View(func(tx store.ReadTx) {
		nets, svcs, tasks, nodes = tx.Networks(), tx.Services(), tx.Tasks(), tx.Nodes()
	})
	if len(nets) != wantNets {
		t.Errorf("%d networks stored, want %d", len(nets), wantNets)
	}
	vnis := map[uint32]string{}
	for i, n := range nets {
		if other, ok := vnis[n.GetVni()]; ok {
			t.Errorf("VNI %d given to %s and %s", n.GetVni(), other, n.GetSpec().GetName())
		}
		vnis[n.GetVni()] = n.GetSpec().GetName()
		for _, o := range nets[:i] {
			if netip.MustParsePrefix(n.GetSubnet()).Overlaps(netip.MustParsePrefix(o.GetSubnet())) {
				t.Errorf("networks %s (%s) and %s (%s) overlap", n.GetSpec().GetName(), n.GetSubnet(), o.GetSpec().GetName(), o.GetSubnet())
			}
		}
	}
	addrs := map[string]string{} // network/address → holder
	claim := func(network, addr, who string) {
		k := network + "/" + netip.MustParsePrefix(addr).Addr().String()
		if other, ok := addrs[k]; ok {
			t.Errorf("address %s on network %s given to %s and %s", addr, network, other, who)
		}
		addrs[k] = who
	}
	ports := map[string]string{}
	for _, svc := range svcs {
		if len(svc.GetEndpoint().GetVips()) != 2 {
			t.Errorf("service %s has VIPs %v, want one on apps and one on ingress", svc.GetSpec().GetName(), svc.GetEndpoint().GetVips())
		}
		for _, v := range svc.GetEndpoint().GetVips() {
			claim(v.GetNetworkId(), v.GetAddr(), "the VIP of "+svc.GetSpec().GetName())
		}
		for _, p := range svc.GetEndpoint().GetPorts() {
			k := fmt.Sprintf("%d/%s", p.GetPublished(), p.GetProtocol())
			if other, ok := ports[k]; ok {
				t.Errorf("published port %s given to %s and %s", k, other, svc.GetSpec().GetName())
			}
			ports[k] = svc.GetSpec().GetName()
		}
	}
	for _, tk := range tasks {
		for _, at := range tk.GetNetworks() {
			claim(at.GetNetworkId(), at.GetAddr(), "task "+tk.GetId())
		}
	}
	for _, n := range nodes {
		if n.GetIngress() != nil {
			claim(n.GetIngress().GetNetworkId(), n.GetIngress().GetAddr(), "node "+n.GetId())
		}
	}
}
