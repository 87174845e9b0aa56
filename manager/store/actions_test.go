package store

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// TestRemoveNodeRecordsIt: removing a node records it in the cluster
// object until its certificate expires, in the same command, and drops
// the records that expired.
func TestRemoveNodeRecordsIt(t *testing.T) {
	now := time.Now()
	s := New()
	cluster := &api.Cluster{Id: "c1", RemovedNodes: []*api.RemovedNode{
		{NodeId: "old", NotAfter: timestamppb.New(now.Add(-time.Hour))},
		{NodeId: "recent", NotAfter: timestamppb.New(now.Add(time.Hour))},
	}}
	node := &api.Node{Id: "n1", Certificate: &api.NodeCertificate{Serial: "ab", NotAfter: timestamppb.New(now.Add(90 * 24 * time.Hour))}}
	if err := s.Apply(1, &api.Command{Actions: []*api.StoreAction{Create(cluster), Create(node)}}); err != nil {
		t.Fatal(err)
	}
	var c *api.Cluster
	var n *api.Node
	s.View(func(tx ReadTx) { c, n = tx.Cluster(), tx.Node("n1") })
	if err := s.Apply(2, &api.Command{Actions: RemoveNode(c, n, now)}); err != nil {
		t.Fatal(err)
	}
	s.View(func(tx ReadTx) { c, n = tx.Cluster(), tx.Node("n1") })
	if n != nil {
		t.Fatal("node still stored")
	}
	got := map[string]time.Time{}
	for _, r := range c.GetRemovedNodes() {
		got[r.GetNodeId()] = r.GetNotAfter().AsTime()
	}
	if _, ok := got["old"]; ok || len(got) != 2 {
		t.Errorf("removed nodes %v: want recent and n1, the expired record dropped", got)
	}
	if !got["n1"].Equal(node.GetCertificate().GetNotAfter().AsTime()) {
		t.Errorf("n1 remembered until %v, want its certificate's expiry", got["n1"])
	}
}
