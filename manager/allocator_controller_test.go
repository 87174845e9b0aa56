package manager

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// startManagerWithIngress is startManager with an ingress network on
// subnet, as `shoald init --ingress-subnet` creates it.
func startManagerWithIngress(t *testing.T, subnet string) (*Manager, *api.Network) {
	t.Helper()
	m := startManagerWith(t, Ingress{Subnet: subnet})
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

	eventually(t, "3 tasks assigned and the node's ingress address", func() (bool, string) {
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
	eventually(t, "node ingress address", func() (bool, string) {
		return storedNodeOf(m, selfID).GetIngress() != nil, "none yet"
	})
	s := spec("web", 5)
	s.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{Target: 80}}}
	svc := createService(t, m, s)

	var assigned, stuck []*api.Task
	eventually(t, "3 tasks assigned, 2 NEW saying why", func() (bool, string) {
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
	eventually(t, "another task takes the failed task's address", func() (bool, string) {
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
	eventually(t, "both nodes with an ingress address", func() (bool, string) {
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
