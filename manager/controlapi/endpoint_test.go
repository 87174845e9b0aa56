package controlapi

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// TestVIPAvoidsTaskAndNodeAddresses checks that the control API rebuilds
// the allocator with the addresses tasks and nodes hold (but not those of
// tasks that ended), so a service's VIP never takes one of them.
func TestVIPAvoidsTaskAndNodeAddresses(t *testing.T) {
	r, c := setup(t)
	ingress := &api.Network{Id: "ing", Spec: &api.NetworkSpec{Name: "ingress"}, Subnet: "10.255.0.0/24", Gateway: "10.255.0.1", Vni: 4096, Ingress: true}
	at := func(addr string) []*api.NetworkAttachment {
		return []*api.NetworkAttachment{{NetworkId: "ing", Addr: addr, Mac: "02:42:0a:ff:00:02"}}
	}
	propose(t, r,
		store.Create(ingress),
		store.Create(&api.Node{Id: "n1", Ingress: at("10.255.0.2/24")[0]}),
		store.Create(&api.Task{Id: "live", ServiceId: "old", NodeId: "n1", Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING}, Networks: at("10.255.0.3/24")}),
		store.Create(&api.Task{Id: "gone", ServiceId: "old", NodeId: "n1", Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_FAILED}, Networks: at("10.255.0.4/24")}),
	)
	s := spec("web", 1)
	s.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{Target: 80, Published: 8080, Traffic: "local"}}}
	svc := create(t, c, s)
	vips := svc.GetEndpoint().GetVips()
	if len(vips) != 1 || vips[0].GetAddr() != "10.255.0.4/24" {
		t.Errorf("VIPs = %v, want 10.255.0.4/24: .2 is the node's, .3 a running task's, .4 only a failed task's", vips)
	}
	if p := svc.GetEndpoint().GetPorts(); len(p) != 1 || p[0].GetTraffic() != "local" {
		t.Errorf("stored ports = %v, want traffic local kept", p)
	}

	bad := spec("api", 1)
	bad.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{Target: 80, Mode: "host", Traffic: "local"}}}
	_, err := c.CreateService(context.Background(), &api.CreateServiceRequest{Spec: bad})
	wantCode(t, err, codes.InvalidArgument, "traffic=local is only valid with mode=ingress")
	bad.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{Target: 80, Traffic: "nearby"}}}
	_, err = c.CreateService(context.Background(), &api.CreateServiceRequest{Spec: bad})
	wantCode(t, err, codes.InvalidArgument, `traffic "nearby"`)
}
