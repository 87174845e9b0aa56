package stored

import (
	"reflect"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator"
	"github.com/shoal-project/shoal/manager/store"
)

func apply(t *testing.T, s *store.Store, actions ...*api.StoreAction) {
	t.Helper()
	if err := s.Apply(s.Index()+1, &api.Command{Actions: actions}); err != nil {
		t.Fatal(err)
	}
}

func attached(id string, st api.TaskState, addr string) *api.Task {
	return &api.Task{Id: id, ServiceId: "svc", NodeId: "n1", Status: &api.TaskStatus{State: st},
		Networks: []*api.NetworkAttachment{{NetworkId: "net", Addr: addr, Mac: "02:42:0a:14:00:05"}}}
}

// TestAllocationTerminalTasksHoldNothing checks that tasks in a terminal
// state keep their addresses in the store but not in the rebuilt
// allocator, so a new task can take them.
func TestAllocationTerminalTasksHoldNothing(t *testing.T) {
	s := store.New()
	apply(t, s,
		store.Create(&api.Network{Id: "net", Spec: &api.NetworkSpec{Name: "apps"}, Subnet: "10.20.0.0/29", Gateway: "10.20.0.1", Vni: 4097}),
		store.Create(&api.Node{Id: "n1", Ingress: &api.NetworkAttachment{NetworkId: "net", Addr: "10.20.0.2/29", Mac: "02:42:0a:14:00:02"}}),
		store.Create(attached("live", api.TaskState_TASK_STATE_RUNNING, "10.20.0.3/29")),
		store.Create(attached("stopping", api.TaskState_TASK_STATE_STARTING, "10.20.0.4/29")),
	)
	for i, st := range []api.TaskState{api.TaskState_TASK_STATE_COMPLETE, api.TaskState_TASK_STATE_SHUTDOWN, api.TaskState_TASK_STATE_FAILED,
		api.TaskState_TASK_STATE_REJECTED, api.TaskState_TASK_STATE_ORPHANED} {
		// All on the same address: only possible because each freed it.
		apply(t, s, store.Create(attached(st.String()+string(rune('a'+i)), st, "10.20.0.5/29")))
	}
	var (
		got allocator.Allocation
		err error
	)
	s.View(func(tx store.ReadTx) { got, err = Allocation(tx) })
	if err != nil {
		t.Fatal(err)
	}
	var tasks []string
	for _, ta := range got.Tasks {
		tasks = append(tasks, ta.TaskID)
	}
	if !reflect.DeepEqual(tasks, []string{"live", "stopping"}) {
		t.Fatalf("tasks holding addresses = %v, want [live stopping]", tasks)
	}
	if len(got.Nodes) != 1 || got.Nodes[0].Ingress.Addr.String() != "10.20.0.2/29" || got.Nodes[0].Ingress.MAC.String() != "02:42:0a:14:00:02" {
		t.Fatalf("nodes = %+v, want n1 on 10.20.0.2/29", got.Nodes)
	}
	a, err := allocator.New(allocator.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Restore(got); err != nil {
		t.Fatalf("restore: %v", err)
	}
	// .1 gateway, .2 node, .3 and .4 live tasks: .5 and .6 are free.
	for _, want := range []string{"10.20.0.5/29", "10.20.0.6/29"} {
		ta, err := a.AllocateTask(allocator.TaskNeeds{ID: "new-" + want, Networks: []string{"net"}})
		if err != nil {
			t.Fatalf("allocate after the terminal tasks: %v", err)
		}
		if at := ta.Attachments[0].Addr.String(); at != want {
			t.Errorf("new task got %s, want %s", at, want)
		}
	}
}

func TestPortsRoundTrip(t *testing.T) {
	in := []*api.PortConfig{{Protocol: "tcp", Target: 80, Published: 8080, Mode: "ingress", Traffic: "local"}, {Protocol: "udp", Target: 53, Mode: "host"}}
	ports, err := Ports(in)
	if err != nil {
		t.Fatal(err)
	}
	if ports[0].Traffic != "local" {
		t.Fatalf("traffic lost on the way in: %+v", ports[0])
	}
	out := APIPorts(ports)
	for i := range in {
		if out[i].String() != in[i].String() {
			t.Errorf("port %d: %v, want %v", i, out[i], in[i])
		}
	}
	if _, err := Ports([]*api.PortConfig{{Target: 70000}}); err == nil {
		t.Error("target 70000 accepted")
	}
}
