package ca

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// settle bounds every wait for something asynchronous; it measures
// nothing.
const settle = 20 * time.Second

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newRaft starts a single-member raft cluster in a temp dir, waits until
// it leads, and stores a cluster object with a CA and join tokens.
func newRaft(t *testing.T, stored *api.RootCA) *state.Node {
	t.Helper()
	_, tr := raft.NewInmemTransport(raft.ServerAddress("m1"))
	n, err := state.Open(state.Config{Dir: t.TempDir(), ID: "m1", Transport: tr, Logger: quietLogger()}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), settle)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	tokens, err := identity.NewJoinTokens(stored.GetDigest())
	if err != nil {
		t.Fatal(err)
	}
	cluster := &api.Cluster{
		Id:         "c1",
		Meta:       &api.Meta{CreatedAt: timestamppb.Now()},
		Spec:       &api.ClusterSpec{Name: "default"},
		RootCa:     stored,
		JoinTokens: tokens,
	}
	if err := n.Propose(ctx, store.Create(cluster)); err != nil {
		t.Fatal(err)
	}
	return n
}

// addNode records a node holding cert, as a join would.
func addNode(t *testing.T, n *state.Node, i identitytest.Issued, addr string) {
	t.Helper()
	role := i.ID.Role.NodeRole()
	node := &api.Node{
		Id:          i.ID.NodeID,
		Spec:        &api.NodeSpec{DesiredRole: role, Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
		Status:      &api.NodeStatus{State: api.NodeState_NODE_STATE_READY, Addr: addr},
		Role:        role,
		Certificate: identity.CertificateRecord(i.Cert, role),
	}
	if role == api.NodeRole_NODE_ROLE_MANAGER {
		node.ManagerStatus = &api.ManagerStatus{RaftAddr: addr}
	}
	if err := n.Propose(context.Background(), store.Create(node)); err != nil {
		t.Fatal(err)
	}
}

func getCluster(n *state.Node) *api.Cluster {
	var c *api.Cluster
	n.Store().View(func(tx store.ReadTx) { c = tx.Cluster() })
	return c
}

func getNode(n *state.Node, id string) *api.Node {
	var node *api.Node
	n.Store().View(func(tx store.ReadTx) { node = tx.Node(id) })
	return node
}

func countNodes(n *state.Node) int {
	var c int
	n.Store().View(func(tx store.ReadTx) { c = len(tx.Nodes()) })
	return c
}

// recordAdmin records an admin certificate, as issuing one does.
func recordAdmin(t *testing.T, n *state.Node, i identitytest.Issued) {
	t.Helper()
	c := proto.Clone(getCluster(n)).(*api.Cluster)
	c.AdminCertificates = append(c.AdminCertificates, identity.AdminRecord(i.Cert))
	if err := n.Propose(context.Background(), store.Update(c)); err != nil {
		t.Fatal(err)
	}
}
