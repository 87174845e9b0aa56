package allocator

import (
	"fmt"
	"net/netip"
	"testing"
)

const (
	benchServices        = 1000
	benchTasksPerService = 10
)

// benchCluster allocates benchServices services, each on one overlay
// network with an automatic ingress port, and benchTasksPerService tasks
// each, as the allocator controller would after `service create`.
func benchCluster(b *testing.B) *Allocator {
	a, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []Network{
		{ID: "ingress", Name: "ingress", Subnet: netip.MustParsePrefix("10.255.0.0/16"), Ingress: true},
		{ID: "apps", Name: "apps", Subnet: netip.MustParsePrefix("10.100.0.0/16")},
	} {
		if _, err := a.AllocateNetwork(n); err != nil {
			b.Fatal(err)
		}
	}
	for s := range benchServices {
		id := fmt.Sprint("s", s)
		if _, err := a.AllocateService(ServiceNeeds{ID: id, Name: id, Networks: []string{"apps"}, Ports: []PortConfig{{Target: 80}}}); err != nil {
			b.Fatal(err)
		}
		for t := range benchTasksPerService {
			if _, err := a.AllocateTask(TaskNeeds{ID: fmt.Sprint(id, ".", t), ServiceID: id, NodeID: "node1"}); err != nil {
				b.Fatal(err)
			}
		}
	}
	return a
}

// BenchmarkAllocate1000Services10Tasks times allocating a whole cluster
// from empty: 2 networks, 1,000 services (2,000 VIPs, 1,000 ports) and
// 10,000 tasks (20,000 addresses).
func BenchmarkAllocate1000Services10Tasks(b *testing.B) {
	for b.Loop() {
		benchCluster(b)
	}
}

// BenchmarkAllocateTaskIn1000Services times one task allocation and
// release with the cluster above present: the steady-state cost per task.
func BenchmarkAllocateTaskIn1000Services(b *testing.B) {
	a := benchCluster(b)
	for b.Loop() {
		if _, err := a.AllocateTask(TaskNeeds{ID: "extra", ServiceID: "s500"}); err != nil {
			b.Fatal(err)
		}
		a.ReleaseTask("extra")
	}
}

// BenchmarkRestore1000Services10Tasks times rebuilding the allocator from
// the store after a change of leader.
func BenchmarkRestore1000Services10Tasks(b *testing.B) {
	st := benchCluster(b).State()
	a, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := a.Restore(st); err != nil {
			b.Fatal(err)
		}
	}
}
