package controlapi

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator"
	"github.com/shoal-project/shoal/manager/store"
)

func createNetwork(t *testing.T, c api.ControlClient, spec *api.NetworkSpec) *api.Network {
	t.Helper()
	resp, err := c.CreateNetwork(context.Background(), &api.CreateNetworkRequest{Spec: spec})
	if err != nil {
		t.Fatalf("create network %s: %v", spec.GetName(), err)
	}
	return resp.GetNetwork()
}

func TestCreateNetwork(t *testing.T) {
	_, c := setup(t)
	ctx := context.Background()

	explicit := createNetwork(t, c, &api.NetworkSpec{Name: "backend", Subnet: "10.20.0.0/24", Gateway: "10.20.0.254", Labels: map[string]string{"tier": "db"}})
	if explicit.GetSubnet() != "10.20.0.0/24" || explicit.GetGateway() != "10.20.0.254" || explicit.GetVni() == 0 {
		t.Errorf("explicit network = %v", explicit)
	}
	if explicit.GetMeta().GetVersion() == 0 || explicit.GetSpec().GetLabels()["tier"] != "db" {
		t.Errorf("stored network lost its meta or labels: %v", explicit)
	}

	pooled := createNetwork(t, c, &api.NetworkSpec{Name: "frontend"})
	if pooled.GetSubnet() == "" || pooled.GetGateway() == "" || pooled.GetVni() == 0 {
		t.Errorf("pooled network = %v", pooled)
	}
	if pooled.GetVni() == explicit.GetVni() || pooled.GetSubnet() == explicit.GetSubnet() {
		t.Errorf("networks share a VNI or subnet: %v and %v", explicit, pooled)
	}
	second := createNetwork(t, c, &api.NetworkSpec{Name: "third"})
	if second.GetSubnet() == pooled.GetSubnet() || second.GetVni() == pooled.GetVni() {
		t.Errorf("two pooled networks share a subnet or VNI: %v and %v", pooled, second)
	}

	list, err := c.ListNetworks(ctx, &api.ListNetworksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range list.GetNetworks() {
		names = append(names, n.GetSpec().GetName())
	}
	if len(names) != 3 || names[0] != "backend" || names[1] != "frontend" || names[2] != "third" {
		t.Errorf("ListNetworks names = %v, want backend, frontend, third", names)
	}

	for _, ref := range []string{"backend", explicit.GetId(), explicit.GetId()[:12]} {
		got, err := c.GetNetwork(ctx, &api.GetNetworkRequest{Network: ref})
		if err != nil || got.GetNetwork().GetId() != explicit.GetId() {
			t.Errorf("GetNetwork(%q) = %v, %v", ref, got.GetNetwork(), err)
		}
	}

	if _, err := c.RemoveNetwork(ctx, &api.RemoveNetworkRequest{Network: "backend"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetNetwork(ctx, &api.GetNetworkRequest{Network: "backend"})
	wantCode(t, err, codes.NotFound, "backend")
	// Its subnet is free again.
	again := createNetwork(t, c, &api.NetworkSpec{Name: "backend2", Subnet: "10.20.0.0/24"})
	if again.GetSubnet() != "10.20.0.0/24" {
		t.Errorf("re-created network = %v", again)
	}
}

func TestCreateNetworkRefused(t *testing.T) {
	r, c := setup(t)
	createNetwork(t, c, &api.NetworkSpec{Name: "backend", Subnet: "10.20.0.0/24"})
	tests := []struct {
		name    string
		spec    *api.NetworkSpec
		code    codes.Code
		mention string
	}{
		{"no spec", nil, codes.InvalidArgument, "spec"},
		{"no name", &api.NetworkSpec{}, codes.InvalidArgument, "name"},
		{"bad name", &api.NetworkSpec{Name: "Back_End"}, codes.InvalidArgument, "Back_End"},
		{"duplicate name", &api.NetworkSpec{Name: "backend"}, codes.AlreadyExists, "backend"},
		{"overlap", &api.NetworkSpec{Name: "db", Subnet: "10.20.0.128/25"}, codes.FailedPrecondition, "backend"},
		{"overlap wider", &api.NetworkSpec{Name: "db", Subnet: "10.0.0.0/8"}, codes.FailedPrecondition, "backend"},
		{"subnet not a CIDR", &api.NetworkSpec{Name: "db", Subnet: "10.30.0.0"}, codes.InvalidArgument, "subnet"},
		{"subnet host bits", &api.NetworkSpec{Name: "db", Subnet: "10.30.0.1/24"}, codes.InvalidArgument, "10.30.0.0/24"},
		{"gateway not an IP", &api.NetworkSpec{Name: "db", Subnet: "10.30.0.0/24", Gateway: "nope"}, codes.InvalidArgument, "gateway"},
		{"gateway outside subnet", &api.NetworkSpec{Name: "db", Subnet: "10.30.0.0/24", Gateway: "10.31.0.1"}, codes.InvalidArgument, "10.31.0.1"},
		{"gateway without subnet", &api.NetworkSpec{Name: "db", Gateway: "10.30.0.1"}, codes.InvalidArgument, "subnet"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := r.Store().Snapshot()
			_, err := c.CreateNetwork(context.Background(), &api.CreateNetworkRequest{Spec: tc.spec})
			wantCode(t, err, tc.code, tc.mention)
			if after := r.Store().Snapshot(); len(after.GetNetworks()) != len(before.GetNetworks()) {
				t.Errorf("refused create changed the networks: %d, was %d", len(after.GetNetworks()), len(before.GetNetworks()))
			}
		})
	}
}

// TestCreateEncryptedNetwork: encrypted is kept as asked, and refused for
// the ingress network, whoever creates it (only manager.Init does, through
// the same allocator the API uses).
func TestCreateEncryptedNetwork(t *testing.T) {
	r := newRaft(t)
	s := newServer(t, r)
	c := serveControl(t, s)
	if n := createNetwork(t, c, &api.NetworkSpec{Name: "secure", Encrypted: true}); !n.GetSpec().GetEncrypted() {
		t.Errorf("stored network %v, want encrypted", n)
	}
	if n := createNetwork(t, c, &api.NetworkSpec{Name: "plain"}); n.GetSpec().GetEncrypted() {
		t.Errorf("stored network %v, want it plain", n)
	}
	before := r.Store().Snapshot()
	_, err := s.networks.CreateNetwork(context.Background(), &api.NetworkSpec{Name: "ingress", Encrypted: true},
		allocator.Network{Name: "ingress", Ingress: true})
	wantCode(t, allocStatus(err), codes.InvalidArgument, `network "ingress" is the ingress network, which cannot be encrypted`)
	if after := r.Store().Snapshot(); len(after.GetNetworks()) != len(before.GetNetworks()) {
		t.Errorf("refused create changed the networks: %d, was %d", len(after.GetNetworks()), len(before.GetNetworks()))
	}
}

func TestRemoveNetworkRefused(t *testing.T) {
	r, c := setup(t)
	propose(t, r, store.Create(&api.Network{Id: "ingress-id", Spec: &api.NetworkSpec{Name: "ingress"}, Subnet: "10.0.0.0/24", Gateway: "10.0.0.1", Vni: 4096, Ingress: true}))
	ctx := context.Background()
	_, err := c.RemoveNetwork(ctx, &api.RemoveNetworkRequest{Network: "nope"})
	wantCode(t, err, codes.NotFound, "nope")
	_, err = c.RemoveNetwork(ctx, &api.RemoveNetworkRequest{})
	wantCode(t, err, codes.InvalidArgument, "empty")
	_, err = c.RemoveNetwork(ctx, &api.RemoveNetworkRequest{Network: "ingress"})
	wantCode(t, err, codes.FailedPrecondition, "ingress")
	_, err = c.GetNetwork(ctx, &api.GetNetworkRequest{Network: "nope"})
	wantCode(t, err, codes.NotFound, "nope")

	// A network created beside the stored ingress one must not overlap it.
	_, err = c.CreateNetwork(ctx, &api.CreateNetworkRequest{Spec: &api.NetworkSpec{Name: "x", Subnet: "10.0.0.0/16"}})
	wantCode(t, err, codes.FailedPrecondition, "ingress")
}

// TestServiceNetworks: a service names networks; they are stored by id,
// unknown ones and the ingress network are refused, and a network in use
// cannot be removed.
func TestServiceNetworks(t *testing.T) {
	r, c := setup(t)
	propose(t, r, store.Create(&api.Network{Id: "ingress-id", Spec: &api.NetworkSpec{Name: "ingress"}, Subnet: "10.0.0.0/24", Gateway: "10.0.0.1", Vni: 4096, Ingress: true}))
	ctx := context.Background()
	net, err := c.CreateNetwork(ctx, &api.CreateNetworkRequest{Spec: &api.NetworkSpec{Name: "backend", Subnet: "10.20.0.0/24"}})
	if err != nil {
		t.Fatal(err)
	}
	spec := func(name string, networks ...string) *api.ServiceSpec {
		return &api.ServiceSpec{Name: name, Networks: networks,
			Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: "img"}},
			Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}}
	}
	_, err = c.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("a", "nope")})
	wantCode(t, err, codes.NotFound, "nope")
	_, err = c.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("a", "ingress")})
	wantCode(t, err, codes.InvalidArgument, "ingress")
	if got, _ := c.ListServices(ctx, &api.ListServicesRequest{}); len(got.GetServices()) != 0 {
		t.Fatalf("refused services were stored: %v", got.GetServices())
	}
	created, err := c.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("db", "backend", net.GetNetwork().GetId())})
	if err != nil {
		t.Fatal(err)
	}
	if got := created.GetService().GetSpec().GetNetworks(); len(got) != 1 || got[0] != net.GetNetwork().GetId() {
		t.Fatalf("stored networks = %v, want [%s]", got, net.GetNetwork().GetId())
	}
	_, err = c.RemoveNetwork(ctx, &api.RemoveNetworkRequest{Network: "backend"})
	wantCode(t, err, codes.FailedPrecondition, "in use by service db")
	if _, err := c.RemoveService(ctx, &api.RemoveServiceRequest{Service: "db"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RemoveNetwork(ctx, &api.RemoveNetworkRequest{Network: "backend"}); err != nil {
		t.Fatalf("remove an unused network: %v", err)
	}
}

// TestServicePorts: published ports are allocated at create, a port held
// by another service is refused naming it, a picked port stays put across
// updates, and a removed service frees its ports.
func TestServicePorts(t *testing.T) {
	r, c := setup(t)
	propose(t, r, store.Create(&api.Network{Id: "ingress-id", Spec: &api.NetworkSpec{Name: "ingress"}, Subnet: "10.0.0.0/24", Gateway: "10.0.0.1", Vni: 4096, Ingress: true}))
	ctx := context.Background()
	spec := func(name string, ports ...*api.PortConfig) *api.ServiceSpec {
		return &api.ServiceSpec{Name: name, Endpoint: &api.EndpointSpec{Ports: ports},
			Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: "img"}},
			Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}}
	}
	port := func(published, target uint32) *api.PortConfig {
		return &api.PortConfig{Protocol: "tcp", Target: target, Published: published, Mode: "ingress"}
	}
	web, err := c.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("web", port(8080, 80))})
	if err != nil {
		t.Fatal(err)
	}
	ep := web.GetService().GetEndpoint()
	if len(ep.GetPorts()) != 1 || ep.GetPorts()[0].GetPublished() != 8080 || len(ep.GetVips()) != 1 || ep.GetVips()[0].GetNetworkId() != "ingress-id" {
		t.Fatalf("web's endpoint = %v", ep)
	}
	_, err = c.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("api", port(8080, 80))})
	wantCode(t, err, codes.FailedPrecondition, "used by service web")
	_, err = c.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("big", port(8080, 70000))})
	wantCode(t, err, codes.InvalidArgument, "1-65535")

	auto, err := c.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("auto", port(0, 80))})
	if err != nil {
		t.Fatal(err)
	}
	picked := auto.GetService().GetEndpoint().GetPorts()[0].GetPublished()
	if picked < 30000 || picked > 32767 {
		t.Fatalf("picked port %d, want 30000-32767", picked)
	}
	s := auto.GetService().GetSpec()
	s.GetReplicated().Replicas = 3
	upd, err := c.UpdateService(ctx, &api.UpdateServiceRequest{Service: "auto", Spec: s})
	if err != nil {
		t.Fatal(err)
	}
	if got := upd.GetService().GetEndpoint().GetPorts()[0].GetPublished(); got != picked {
		t.Fatalf("scaling moved the picked port from %d to %d", picked, got)
	}
	if _, err := c.RemoveService(ctx, &api.RemoveServiceRequest{Service: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("api", port(8080, 80))}); err != nil {
		t.Fatalf("port of a removed service still held: %v", err)
	}
}
