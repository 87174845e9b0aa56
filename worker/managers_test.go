package worker

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
)

// TestManagerPoolTrustsOnlyManagers: the pool's connections accept a
// manager certificate only for a node the managers last named (or a
// leader a trusted manager vouched for); with no node named yet (an old
// node file), any manager certificate of the cluster, as before.
func TestManagerPoolTrustsOnlyManagers(t *testing.T) {
	var verify func(identity.Identity) error
	dial := func(addr string, v func(identity.Identity) error) (*grpc.ClientConn, error) {
		verify = v
		return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	mgr := func(id string) identity.Identity { return identity.Identity{NodeID: id, Role: identity.RoleManager} }
	pool := NewManagerPool(ManagerNodes([]string{"10.0.0.1:4242"}), dial, nil)
	defer pool.Close()
	if _, _, err := pool.Conn(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if err := verify(mgr("anyone")); err != nil {
		t.Errorf("no manager nodes known yet, yet a manager certificate was refused: %v", err)
	}
	if err := verify(identity.Identity{NodeID: "w1", Role: identity.RoleWorker}); err == nil {
		t.Error("a worker certificate was taken for a manager")
	}

	pool.Update([]*api.ManagerNode{{NodeId: "m1", Addr: "10.0.0.1:4242"}, {NodeId: "m2", Addr: "10.0.0.2:4242"}})
	for _, tt := range []struct {
		id   string
		want bool
	}{{"m1", true}, {"m2", true}, {"m3", false}} {
		if err := pool.Verify(mgr(tt.id)); (err == nil) != tt.want {
			t.Errorf("%s: trusted %v, want %v (%v)", tt.id, err == nil, tt.want, err)
		}
	}
	// m2 demoted: the next list lacks it.
	pool.Update([]*api.ManagerNode{{NodeId: "m1", Addr: "10.0.0.1:4242"}})
	if err := pool.Verify(mgr("m2")); err == nil {
		t.Error("a manager dropped from the list is still trusted")
	}
	// A trusted follower names a newly promoted leader.
	pool.Vouch("m4", "10.0.0.4:4242")
	if err := pool.Verify(mgr("m4")); err != nil {
		t.Errorf("a vouched-for leader was refused: %v", err)
	}
}
