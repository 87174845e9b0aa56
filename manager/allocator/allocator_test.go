package allocator

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

var (
	ingressNet  = Network{ID: "n-ingress", Name: "ingress", Subnet: netip.MustParsePrefix("10.255.0.0/16"), VNI: 4096, Ingress: true}
	backendNet  = Network{ID: "n-backend", Name: "backend", Subnet: netip.MustParsePrefix("10.20.0.0/24")}
	frontendNet = Network{ID: "n-frontend", Name: "frontend", Subnet: netip.MustParsePrefix("10.21.0.0/24")}
	// tinyNet has one address besides its gateway, taken by task t-full.
	tinyNet = Network{ID: "n-tiny", Name: "tiny", Subnet: netip.MustParsePrefix("10.40.0.0/30")}
	webSvc  = ServiceNeeds{ID: "s-web", Name: "web", Networks: []string{"n-backend"}, Ports: []PortConfig{{Target: 80, Published: 8080}}}
)

// fixture returns an allocator holding the ingress, backend, frontend and
// tiny networks, service web (backend, 8080:80) and task t-full on tiny.
func fixture(t testing.TB, cfg Config) *Allocator {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []Network{ingressNet, backendNet, frontendNet, tinyNet} {
		if _, err := a.AllocateNetwork(n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.AllocateService(webSvc); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AllocateTask(TaskNeeds{ID: "t-full", Networks: []string{"n-tiny"}}); err != nil {
		t.Fatal(err)
	}
	return a
}

// fingerprint captures everything an allocation may change, including the
// bookkeeping State does not show (subnets, VNIs and addresses held), so a
// test can check that a failed call changed nothing.
func fingerprint(a *Allocator) string {
	a.mu.Lock()
	var b strings.Builder
	fmt.Fprintf(&b, "pool %v\n", a.pool.InUse())
	for _, n := range a.sortedNetworks() {
		fmt.Fprintf(&b, "addresses %s %d\n", n.ID, n.ips.InUse())
	}
	for v := a.cfg.MinVNI; v < a.cfg.MinVNI+64; v++ {
		if a.vnis.AllocateSpecific(v) == nil {
			_ = a.vnis.Release(v)
		} else {
			fmt.Fprintf(&b, "vni %d\n", v)
		}
	}
	fmt.Fprintf(&b, "ports %v\n", a.ports)
	a.mu.Unlock()
	fmt.Fprintf(&b, "%+v", a.State())
	return b.String()
}

// checkErr fails unless err wraps want and contains every fragment.
func checkErr(t *testing.T, err, want error, fragments ...string) {
	t.Helper()
	if err == nil || !errors.Is(err, want) {
		t.Fatalf("err = %v, want one wrapping %v", err, want)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Fatalf("err = %q, want it to contain %q", err, f)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"empty port range", Config{MinPort: 31000, MaxPort: 30000}, "dynamic port range 31000-30000 is empty"},
		{"pool with host bits", Config{Pool: netip.MustParsePrefix("10.0.0.1/8")}, "host bits"},
		{"pool size too small", Config{PoolBits: 4}, "subnet size /4"},
		{"VNI range", Config{MinVNI: 10, MaxVNI: 5}, "VNI range 10-5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			checkErr(t, err, ErrInvalid, tt.wantErr)
		})
	}
}

func TestAllocateNetwork(t *testing.T) {
	p := netip.MustParsePrefix
	ad := netip.MustParseAddr
	tests := []struct {
		name    string
		req     Network
		want    Network
		wantErr error
		errHas  []string
	}{
		{name: "default subnet from the pool", req: Network{ID: "n1", Name: "a"},
			want: Network{ID: "n1", Name: "a", Subnet: p("10.0.0.0/24"), Gateway: ad("10.0.0.1"), VNI: 4100}},
		{name: "explicit subnet and gateway", req: Network{ID: "n1", Name: "a", Subnet: p("10.30.0.0/24"), Gateway: ad("10.30.0.254")},
			want: Network{ID: "n1", Name: "a", Subnet: p("10.30.0.0/24"), Gateway: ad("10.30.0.254"), VNI: 4100}},
		{name: "explicit subnet outside the pool", req: Network{ID: "n1", Name: "a", Subnet: p("192.168.7.0/24"), VNI: 5000},
			want: Network{ID: "n1", Name: "a", Subnet: p("192.168.7.0/24"), Gateway: ad("192.168.7.1"), VNI: 5000}},
		{name: "subnet overlaps a network", req: Network{ID: "n1", Name: "a", Subnet: p("10.20.0.0/16")},
			wantErr: ErrConflict, errHas: []string{"allocate network a", "subnet 10.20.0.0/16 overlaps network backend (10.20.0.0/24)"}},
		{name: "subnet inside the ingress network", req: Network{ID: "n1", Name: "a", Subnet: p("10.255.3.0/24")},
			wantErr: ErrConflict, errHas: []string{"overlaps network ingress (10.255.0.0/16)"}},
		{name: "same subnet", req: Network{ID: "n1", Name: "a", Subnet: p("10.21.0.0/24")},
			wantErr: ErrConflict, errHas: []string{"overlaps network frontend"}},
		{name: "gateway outside the subnet", req: Network{ID: "n1", Name: "a", Subnet: p("10.30.0.0/24"), Gateway: ad("10.31.0.1")},
			wantErr: ErrInvalid, errHas: []string{"gateway", "10.31.0.1", "not in subnet 10.30.0.0/24"}},
		{name: "gateway is the broadcast address", req: Network{ID: "n1", Name: "a", Subnet: p("10.30.0.0/24"), Gateway: ad("10.30.0.255")},
			wantErr: ErrInvalid, errHas: []string{"broadcast"}},
		{name: "gateway without subnet", req: Network{ID: "n1", Name: "a", Gateway: ad("10.30.0.1")},
			wantErr: ErrInvalid, errHas: []string{"gateway 10.30.0.1 needs a subnet"}},
		{name: "subnet with host bits", req: Network{ID: "n1", Name: "a", Subnet: p("10.30.0.7/24")},
			wantErr: ErrInvalid, errHas: []string{"did you mean 10.30.0.0/24"}},
		{name: "IPv6 subnet", req: Network{ID: "n1", Name: "a", Subnet: p("fd00::/64")},
			wantErr: ErrInvalid, errHas: []string{"only IPv4"}},
		{name: "name taken", req: Network{ID: "n1", Name: "backend"},
			wantErr: ErrConflict, errHas: []string{"name backend is taken by network n-backend"}},
		{name: "id taken", req: Network{ID: "n-backend", Name: "other"},
			wantErr: ErrConflict, errHas: []string{"id n-backend already exists"}},
		{name: "second ingress", req: Network{ID: "n1", Name: "mesh2", Ingress: true},
			wantErr: ErrConflict, errHas: []string{"already has an ingress network, ingress"}},
		{name: "VNI in use with pool subnet", req: Network{ID: "n1", Name: "a", VNI: 4096},
			wantErr: ErrConflict, errHas: []string{"VNI 4096 is used by network ingress"}},
		{name: "VNI in use with explicit subnet", req: Network{ID: "n1", Name: "a", Subnet: p("10.30.0.0/24"), VNI: 4097},
			wantErr: ErrConflict, errHas: []string{"VNI 4097 is used by network backend"}},
		{name: "VNI out of range", req: Network{ID: "n1", Name: "a", VNI: 7},
			wantErr: ErrInvalid, errHas: []string{"VNI 7 not in 4096-16777215"}},
		{name: "no name", req: Network{ID: "n1"},
			wantErr: ErrInvalid, errHas: []string{"needs an id and a name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := fixture(t, Config{})
			before := fingerprint(a)
			got, err := a.AllocateNetwork(tt.req)
			if tt.wantErr != nil {
				checkErr(t, err, tt.wantErr, tt.errHas...)
				if after := fingerprint(a); after != before {
					t.Fatalf("failed allocation changed the allocator:\nbefore %s\nafter  %s", before, after)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("AllocateNetwork = %+v, %v; want %+v", got, err, tt.want)
			}
			if n, ok := a.Network(tt.req.Name); !ok || n != tt.want {
				t.Fatalf("Network(%s) = %+v, %v", tt.req.Name, n, ok)
			}
		})
	}
}

func TestNetworkPoolExhausted(t *testing.T) {
	a, err := New(Config{Pool: netip.MustParsePrefix("10.9.0.0/23"), PoolBits: 24})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := a.AllocateNetwork(Network{ID: fmt.Sprint(i), Name: fmt.Sprint("n", i)}); err != nil {
			t.Fatal(err)
		}
	}
	before := fingerprint(a)
	_, err = a.AllocateNetwork(Network{ID: "x", Name: "x"})
	checkErr(t, err, ErrExhausted, "no free /24 subnet")
	if fingerprint(a) != before {
		t.Fatal("failed allocation changed the allocator")
	}
}

func TestVNIExhaustedLeavesSubnetFree(t *testing.T) {
	a, err := New(Config{MinVNI: 100, MaxVNI: 100})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AllocateNetwork(Network{ID: "1", Name: "one"}); err != nil {
		t.Fatal(err)
	}
	_, err = a.AllocateNetwork(Network{ID: "2", Name: "two"})
	checkErr(t, err, ErrExhausted, "VNI range 100-100")
	if got := a.pool.InUse(); len(got) != 1 {
		t.Fatalf("subnets in use after the failure: %v, want only network one's", got)
	}
}

func TestAllocateService(t *testing.T) {
	pf := netip.MustParsePrefix
	tests := []struct {
		name      string
		req       ServiceNeeds
		wantNets  []string
		wantVIPs  []VIP
		wantPorts []PortConfig
		wantErr   error
		errHas    []string
	}{
		{name: "VIP on its network",
			req:      ServiceNeeds{ID: "s1", Name: "db", Networks: []string{"n-backend"}},
			wantNets: []string{"n-backend"}, wantVIPs: []VIP{{"n-backend", pf("10.20.0.3/24")}}},
		{name: "network named instead of id",
			req:      ServiceNeeds{ID: "s1", Name: "db", Networks: []string{"frontend", "n-frontend"}},
			wantNets: []string{"n-frontend"}, wantVIPs: []VIP{{"n-frontend", pf("10.21.0.2/24")}}},
		{name: "dnsrr has no VIP",
			req:      ServiceNeeds{ID: "s1", Name: "db", Networks: []string{"n-backend"}, EndpointMode: "dnsrr"},
			wantNets: []string{"n-backend"}},
		{name: "ingress port attaches ingress",
			req:       ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"n-backend"}, Ports: []PortConfig{{Target: 80, Published: 8081}}},
			wantNets:  []string{"n-backend", "n-ingress"},
			wantVIPs:  []VIP{{"n-backend", pf("10.20.0.3/24")}, {"n-ingress", pf("10.255.0.3/16")}},
			wantPorts: []PortConfig{{Protocol: "tcp", Target: 80, Published: 8081, Mode: "ingress"}}},
		{name: "automatic port from the dynamic range",
			req:       ServiceNeeds{ID: "s1", Name: "api", Ports: []PortConfig{{Target: 80}}},
			wantNets:  []string{"n-ingress"},
			wantVIPs:  []VIP{{"n-ingress", pf("10.255.0.3/16")}},
			wantPorts: []PortConfig{{Protocol: "tcp", Target: 80, Published: 30000, Mode: "ingress"}}},
		{name: "automatic port skips an explicit one of the same request",
			req:      ServiceNeeds{ID: "s1", Name: "api", Ports: []PortConfig{{Target: 81}, {Target: 80, Published: 30000}}},
			wantNets: []string{"n-ingress"}, wantVIPs: []VIP{{"n-ingress", pf("10.255.0.3/16")}},
			wantPorts: []PortConfig{{Protocol: "tcp", Target: 81, Published: 30001, Mode: "ingress"}, {Protocol: "tcp", Target: 80, Published: 30000, Mode: "ingress"}}},
		{name: "same port other protocol",
			req:       ServiceNeeds{ID: "s1", Name: "dns", Ports: []PortConfig{{Protocol: "udp", Target: 53, Published: 8080}}},
			wantNets:  []string{"n-ingress"},
			wantVIPs:  []VIP{{"n-ingress", pf("10.255.0.3/16")}},
			wantPorts: []PortConfig{{Protocol: "udp", Target: 53, Published: 8080, Mode: "ingress"}}},
		{name: "host mode is not reserved cluster-wide",
			req:       ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"n-backend"}, EndpointMode: "dnsrr", Ports: []PortConfig{{Target: 80, Published: 8080, Mode: "host"}, {Target: 81, Mode: "host"}}},
			wantNets:  []string{"n-backend", "n-ingress"},
			wantPorts: []PortConfig{{Protocol: "tcp", Target: 80, Published: 8080, Mode: "host"}, {Protocol: "tcp", Target: 81, Mode: "host"}}},
		{name: "host mode attaches ingress without a VIP there",
			req:       ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"n-backend"}, Ports: []PortConfig{{Target: 80, Published: 8080, Mode: "host"}}},
			wantNets:  []string{"n-backend", "n-ingress"},
			wantVIPs:  []VIP{{"n-backend", pf("10.20.0.3/24")}},
			wantPorts: []PortConfig{{Protocol: "tcp", Target: 80, Published: 8080, Mode: "host"}}},
		{name: "local traffic kept on an ingress port",
			req:       ServiceNeeds{ID: "s1", Name: "api", Ports: []PortConfig{{Target: 80, Published: 8081, Traffic: "Local"}}},
			wantNets:  []string{"n-ingress"},
			wantVIPs:  []VIP{{"n-ingress", pf("10.255.0.3/16")}},
			wantPorts: []PortConfig{{Protocol: "tcp", Target: 80, Published: 8081, Mode: "ingress", Traffic: "local"}}},

		{name: "port held by another service",
			req:     ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"n-backend"}, Ports: []PortConfig{{Target: 81}, {Target: 80, Published: 8080}}},
			wantErr: ErrConflict, errHas: []string{"allocate service api", "published port 8080/tcp is already used by service web"}},
		{name: "unknown network",
			req:     ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"n-backend", "nope"}},
			wantErr: ErrNotFound, errHas: []string{`network "nope"`}},
		{name: "ingress by name",
			req:     ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"ingress"}},
			wantErr: ErrInvalid, errHas: []string{"network ingress is the routing mesh"}},
		{name: "dnsrr with an ingress port",
			req:     ServiceNeeds{ID: "s1", Name: "api", EndpointMode: "dnsrr", Ports: []PortConfig{{Target: 80}}},
			wantErr: ErrInvalid, errHas: []string{"cannot be used with endpoint mode dnsrr", "mode=host"}},
		{name: "traffic on a host port",
			req:     ServiceNeeds{ID: "s1", Name: "api", Ports: []PortConfig{{Target: 80, Published: 8081, Mode: "host", Traffic: "local"}}},
			wantErr: ErrInvalid, errHas: []string{"traffic=local is only valid with mode=ingress"}},
		{name: "bad traffic",
			req:     ServiceNeeds{ID: "s1", Name: "api", Ports: []PortConfig{{Target: 80, Traffic: "nearby"}}},
			wantErr: ErrInvalid, errHas: []string{`traffic "nearby": want cluster or local`}},
		{name: "port twice in one request",
			req:     ServiceNeeds{ID: "s1", Name: "api", Ports: []PortConfig{{Target: 80, Published: 9000}, {Target: 81, Published: 9000, Mode: "host"}}},
			wantErr: ErrInvalid, errHas: []string{"port 9000/tcp is published twice"}},
		{name: "bad endpoint mode",
			req:     ServiceNeeds{ID: "s1", Name: "api", EndpointMode: "rr"},
			wantErr: ErrInvalid, errHas: []string{`endpoint mode "rr": want vip or dnsrr`}},
		{name: "bad protocol",
			req:     ServiceNeeds{ID: "s1", Name: "api", Ports: []PortConfig{{Protocol: "sctp", Target: 80}}},
			wantErr: ErrInvalid, errHas: []string{`protocol "sctp"`}},
		{name: "no target",
			req:     ServiceNeeds{ID: "s1", Name: "api", Ports: []PortConfig{{Published: 9000}}},
			wantErr: ErrInvalid, errHas: []string{"target port is required"}},
		{name: "no id",
			req:     ServiceNeeds{Name: "api"},
			wantErr: ErrInvalid, errHas: []string{"needs an id"}},
		{name: "VIP exhausted after others were taken",
			req:     ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"n-backend", "n-frontend", "n-tiny"}, Ports: []PortConfig{{Target: 80}}},
			wantErr: ErrExhausted, errHas: []string{"VIP on network tiny"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := fixture(t, Config{})
			before := fingerprint(a)
			got, err := a.AllocateService(tt.req)
			if tt.wantErr != nil {
				checkErr(t, err, tt.wantErr, tt.errHas...)
				if after := fingerprint(a); after != before {
					t.Fatalf("failed allocation changed the allocator:\nbefore %s\nafter  %s", before, after)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Networks, tt.wantNets) || !reflect.DeepEqual(got.VIPs, tt.wantVIPs) || !reflect.DeepEqual(got.Ports, tt.wantPorts) {
				t.Fatalf("AllocateService = nets %v VIPs %v ports %v\nwant nets %v VIPs %v ports %v", got.Networks, got.VIPs, got.Ports, tt.wantNets, tt.wantVIPs, tt.wantPorts)
			}
			if s, ok := a.Service(tt.req.ID); !ok || !reflect.DeepEqual(s, got) {
				t.Fatalf("Service(%s) = %+v, %v; want %+v", tt.req.ID, s, ok, got)
			}
		})
	}
}

func TestAllocateServiceUpdate(t *testing.T) {
	a := fixture(t, Config{})
	first, err := a.AllocateService(ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"n-backend"},
		Ports: []PortConfig{{Target: 81}, {Target: 80, Published: 9000}}})
	if err != nil {
		t.Fatal(err)
	}
	// A failed update keeps the old allocation.
	before := fingerprint(a)
	_, err = a.AllocateService(ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"n-backend"}, Ports: []PortConfig{{Target: 80, Published: 8080}}})
	checkErr(t, err, ErrConflict, "used by service web")
	if fingerprint(a) != before {
		t.Fatal("failed update changed the allocator")
	}

	second, err := a.AllocateService(ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"n-frontend", "n-backend"},
		Ports: []PortConfig{{Target: 81}, {Target: 82}}})
	if err != nil {
		t.Fatal(err)
	}
	if second.VIPs[1] != first.VIPs[0] || second.VIPs[2] != first.VIPs[1] {
		t.Errorf("VIPs on kept networks changed: %v then %v", first.VIPs, second.VIPs)
	}
	if second.Ports[0].Published != first.Ports[0].Published {
		t.Errorf("automatic port for target 81 changed from %d to %d", first.Ports[0].Published, second.Ports[0].Published)
	}
	if second.Ports[1].Published == first.Ports[0].Published || second.Ports[1].Published == 0 {
		t.Errorf("new automatic port %d", second.Ports[1].Published)
	}
	// Port 9000 was dropped, so another service may take it.
	if _, err := a.AllocateService(ServiceNeeds{ID: "s2", Name: "other", Ports: []PortConfig{{Target: 80, Published: 9000}}}); err != nil {
		t.Errorf("port 9000 still held after the update dropped it: %v", err)
	}

	// Switching to dnsrr with no ingress ports frees every VIP.
	inUse := a.networks["n-backend"].ips.InUse()
	third, err := a.AllocateService(ServiceNeeds{ID: "s1", Name: "api", Networks: []string{"n-backend"}, EndpointMode: "dnsrr"})
	if err != nil {
		t.Fatal(err)
	}
	if len(third.VIPs) != 0 || a.networks["n-backend"].ips.InUse() != inUse-1 {
		t.Errorf("dnsrr update kept VIPs: %v (backend addresses %d, was %d)", third.VIPs, a.networks["n-backend"].ips.InUse(), inUse)
	}
	if _, err := a.AllocateService(ServiceNeeds{ID: "s3", Name: "third", Ports: []PortConfig{{Target: 1, Published: second.Ports[0].Published}}}); err != nil {
		t.Errorf("automatic port %d still held: %v", second.Ports[0].Published, err)
	}
}

func TestAutomaticPorts(t *testing.T) {
	a := fixture(t, Config{MinPort: 30000, MaxPort: 30002})
	svc := func(id string, proto string) ServiceNeeds {
		return ServiceNeeds{ID: id, Name: id, Ports: []PortConfig{{Protocol: proto, Target: 80}}}
	}
	for i, want := range []uint16{30000, 30001, 30002} {
		s, err := a.AllocateService(svc(fmt.Sprint("s", i), "tcp"))
		if err != nil || s.Ports[0].Published != want {
			t.Fatalf("service %d: %+v, %v; want port %d", i, s.Ports, err, want)
		}
	}
	before := fingerprint(a)
	_, err := a.AllocateService(svc("s3", "tcp"))
	checkErr(t, err, ErrExhausted, "every tcp port from 30000 to 30002 is published")
	if fingerprint(a) != before {
		t.Fatal("failed allocation changed the allocator")
	}
	if s, err := a.AllocateService(svc("u0", "udp")); err != nil || s.Ports[0].Published != 30000 {
		t.Fatalf("udp: %+v, %v; want 30000", s.Ports, err)
	}
	a.ReleaseService("s1")
	if s, err := a.AllocateService(svc("s4", "tcp")); err != nil || s.Ports[0].Published != 30001 {
		t.Fatalf("after release: %+v, %v; want 30001", s.Ports, err)
	}
}

func TestAllocateTask(t *testing.T) {
	a := fixture(t, Config{})
	got, err := a.AllocateTask(TaskNeeds{ID: "t1", ServiceID: "s-web", NodeID: "node1", Networks: []string{"n-frontend", "n-backend"}})
	if err != nil {
		t.Fatal(err)
	}
	want := TaskAllocation{TaskID: "t1", ServiceID: "s-web", NodeID: "node1", Attachments: []Attachment{
		{"n-frontend", netip.MustParsePrefix("10.21.0.2/24"), []byte{2, 0x42, 10, 21, 0, 2}},
		{"n-backend", netip.MustParsePrefix("10.20.0.3/24"), []byte{2, 0x42, 10, 20, 0, 3}},
		{"n-ingress", netip.MustParsePrefix("10.255.0.3/16"), []byte{2, 0x42, 10, 255, 0, 3}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("AllocateTask =\n%+v\nwant\n%+v", got, want)
	}
	again, err := a.AllocateTask(TaskNeeds{ID: "t1", ServiceID: "s-web"})
	if err != nil || !reflect.DeepEqual(again, want) {
		t.Fatalf("second AllocateTask = %+v, %v; want the first allocation", again, err)
	}

	errTests := []struct {
		name    string
		req     TaskNeeds
		wantErr error
		errHas  []string
	}{
		{"unknown network", TaskNeeds{ID: "t2", Networks: []string{"nope"}}, ErrNotFound, []string{"allocate task t2", `network "nope"`}},
		{"service not allocated", TaskNeeds{ID: "t2", ServiceID: "s-none"}, ErrNotFound, []string{"service s-none is not allocated"}},
		{"network full after others", TaskNeeds{ID: "t2", ServiceID: "s-web", Networks: []string{"n-tiny"}}, ErrExhausted, []string{"address on network tiny"}},
		{"no id", TaskNeeds{}, ErrInvalid, []string{"needs an id"}},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			before := fingerprint(a)
			_, err := a.AllocateTask(tt.req)
			checkErr(t, err, tt.wantErr, tt.errHas...)
			if after := fingerprint(a); after != before {
				t.Fatalf("failed allocation changed the allocator:\nbefore %s\nafter  %s", before, after)
			}
		})
	}

	a.ReleaseTask("t-full")
	a.ReleaseTask("t-full") // releasing twice does nothing
	if _, err := a.AllocateTask(TaskNeeds{ID: "t3", Networks: []string{"n-tiny"}}); err != nil {
		t.Fatalf("tiny's address not freed by ReleaseTask: %v", err)
	}
	if _, ok := a.Task("t-full"); ok {
		t.Fatal("released task still listed")
	}
}

func TestAllocateNode(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.AllocateNode("node1")
	checkErr(t, err, ErrNotFound, "allocate node node1", "no ingress network")
	_, err = a.AllocateNode("")
	checkErr(t, err, ErrInvalid, "needs an id")

	if _, err := a.AllocateNetwork(Network{ID: "in", Name: "ingress", Subnet: netip.MustParsePrefix("10.255.0.0/29"), Ingress: true}); err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Prefix]bool{}
	for i := range 5 { // .2 to .6: every address but the gateway
		n, err := a.AllocateNode(fmt.Sprint("node", i))
		if err != nil {
			t.Fatal(err)
		}
		if n.Ingress.NetworkID != "in" || seen[n.Ingress.Addr] || n.Ingress.MAC.String() != fmt.Sprintf("02:42:0a:ff:00:%02x", n.Ingress.Addr.Addr().As4()[3]) {
			t.Fatalf("node%d got %+v", i, n)
		}
		seen[n.Ingress.Addr] = true
	}
	again, err := a.AllocateNode("node0")
	if err != nil || again.Ingress.Addr.String() != "10.255.0.2/29" {
		t.Fatalf("AllocateNode(node0) again = %+v, %v; want its first address", again, err)
	}
	before := fingerprint(a)
	_, err = a.AllocateNode("node9")
	checkErr(t, err, ErrExhausted, "address on network ingress")
	if fingerprint(a) != before {
		t.Fatal("failed allocation changed the allocator")
	}
	a.ReleaseNode("node3")
	if _, err := a.AllocateNode("node9"); err != nil {
		t.Fatalf("address not freed by ReleaseNode: %v", err)
	}
}

func TestReleaseNetworkRefusedWhileInUse(t *testing.T) {
	a := fixture(t, Config{})
	if _, err := a.AllocateTask(TaskNeeds{ID: "t1", ServiceID: "s-web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AllocateNode("node1"); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		release string // what to release before trying
		network string
		errHas  string
	}{
		{"", "n-backend", "release network backend: conflict: in use by service web and 1 more; remove them first"},
		{"service s-web", "n-backend", "in use by task t1;"},
		{"", "n-ingress", "in use by task t1 and 1 more"},
		{"task t1", "n-ingress", "in use by node node1"},
		{"", "n-tiny", "in use by task t-full"},
	}
	for _, s := range steps {
		switch s.release {
		case "service s-web":
			a.ReleaseService("s-web")
		case "task t1":
			a.ReleaseTask("t1")
		}
		err := a.ReleaseNetwork(s.network)
		checkErr(t, err, ErrConflict, s.errHas)
	}
	if err := a.ReleaseNetwork("n-backend"); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleaseNetwork("n-backend"); err != nil {
		t.Fatalf("releasing an unknown network: %v", err)
	}
	if _, ok := a.Network("backend"); ok {
		t.Fatal("released network still listed")
	}
	n, err := a.AllocateNetwork(Network{ID: "n2", Name: "backend", Subnet: backendNet.Subnet, VNI: 4097})
	if err != nil {
		t.Fatalf("subnet and VNI of a released network not freed: %v", err)
	}
	if n.Subnet != backendNet.Subnet {
		t.Fatalf("got %v", n)
	}
}

func TestRestore(t *testing.T) {
	a := fixture(t, Config{})
	if _, err := a.AllocateTask(TaskNeeds{ID: "t1", ServiceID: "s-web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AllocateNode("node1"); err != nil {
		t.Fatal(err)
	}
	st := a.State()

	b, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Restore(st); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(b.State(), st) {
		t.Fatalf("restored state differs:\n%+v\nwant\n%+v", b.State(), st)
	}
	if fingerprint(b) != fingerprint(a) {
		t.Fatalf("restored bookkeeping differs:\n%s\nwant\n%s", fingerprint(b), fingerprint(a))
	}
	// What was restored is held: port, subnet, VNI, addresses.
	_, err = b.AllocateService(ServiceNeeds{ID: "s2", Name: "api", Ports: []PortConfig{{Target: 80, Published: 8080}}})
	checkErr(t, err, ErrConflict, "used by service web")
	_, err = b.AllocateNetwork(Network{ID: "n2", Name: "x", Subnet: netip.MustParsePrefix("10.20.0.0/25")})
	checkErr(t, err, ErrConflict, "overlaps network backend")
	_, err = b.AllocateTask(TaskNeeds{ID: "t2", Networks: []string{"n-tiny"}})
	checkErr(t, err, ErrExhausted, "network tiny")

	// Restore replaces what was there before.
	if err := b.Restore(Allocation{}); err != nil {
		t.Fatal(err)
	}
	if got := b.State(); len(got.Networks)+len(got.Services)+len(got.Tasks)+len(got.Nodes) != 0 {
		t.Fatalf("Restore(empty) left %+v", got)
	}
}

func TestRestoreSkipsConflicts(t *testing.T) {
	a := fixture(t, Config{})
	st := a.State()
	web := st.Services[0]
	clash := web
	clash.ServiceID, clash.Name, clash.VIPs = "s-clash", "clash", nil
	twin := st.Tasks[0]
	twin.TaskID = "t-twin"
	st.Networks = append(st.Networks,
		Network{ID: "n-over", Name: "over", Subnet: netip.MustParsePrefix("10.20.0.0/16"), VNI: 5000},
		Network{ID: "n-in2", Name: "in2", Subnet: netip.MustParsePrefix("10.50.0.0/24"), VNI: 5001, Ingress: true},
		Network{ID: "n-vni", Name: "samevni", Subnet: netip.MustParsePrefix("10.51.0.0/24"), VNI: 4096},
	)
	st.Services = append(st.Services, clash)
	st.Tasks = append(st.Tasks, twin, TaskAllocation{TaskID: "t-lost", Attachments: []Attachment{{NetworkID: "n-gone", Addr: netip.MustParsePrefix("10.60.0.2/24")}}})
	st.Nodes = append(st.Nodes, NodeAllocation{NodeID: "node-bad", Ingress: Attachment{NetworkID: "n-ingress", Addr: netip.MustParsePrefix("10.254.0.2/16")}})

	b, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	err = b.Restore(st)
	for _, want := range []string{
		"restore network over: conflict",
		"restore network in2: conflict: a second ingress network",
		"restore network samevni: conflict",
		"restore service clash: conflict: published port 8080/tcp is already used by service web",
		"restore task t-twin: address 10.40.0.2/30: conflict",
		`restore task t-lost: address 10.60.0.2/24: not found: network "n-gone"`,
		"restore node node-bad: ingress address 10.254.0.2/16",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Restore error %v\nwant it to contain %q", err, want)
		}
	}
	want := fixture(t, Config{})
	if fingerprint(b) != fingerprint(want) {
		t.Fatalf("after skipping conflicts:\n%s\nwant\n%s", fingerprint(b), fingerprint(want))
	}
}
