package store

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// Create, Update and Remove build store actions for an object. They panic
// on a type the store does not hold: that is a programming error.
func Create(o any) *api.StoreAction { return action(api.StoreActionKind_STORE_ACTION_KIND_CREATE, o) }

// Update builds an UPDATE; o must carry the meta.version it was read at.
func Update(o any) *api.StoreAction { return action(api.StoreActionKind_STORE_ACTION_KIND_UPDATE, o) }

// Remove builds a REMOVE.
func Remove(o any) *api.StoreAction { return action(api.StoreActionKind_STORE_ACTION_KIND_REMOVE, o) }

func action(kind api.StoreActionKind, o any) *api.StoreAction {
	a := &api.StoreAction{Kind: kind}
	switch v := o.(type) {
	case *api.Node:
		a.Target = &api.StoreAction_Node{Node: v}
	case *api.Service:
		a.Target = &api.StoreAction_Service{Service: v}
	case *api.Task:
		a.Target = &api.StoreAction_Task{Task: v}
	case *api.Cluster:
		a.Target = &api.StoreAction_Cluster{Cluster: v}
	case *api.Image:
		a.Target = &api.StoreAction_Image{Image: v}
	case *api.Network:
		a.Target = &api.StoreAction_Network{Network: v}
	default:
		panic(fmt.Sprintf("store: no table for %T", o))
	}
	return a
}

// RemoveNode builds the command that removes node n from the cluster: its
// REMOVE, and an UPDATE of cluster (read in the same view) that records n
// among the removed nodes until its certificate expires, dropping the
// records that expired by now. A removed node's certificate stays valid;
// the record lets every manager refuse it on raft (see
// api.Cluster.removed_nodes). With no cluster object only the REMOVE is
// built.
func RemoveNode(cluster *api.Cluster, n *api.Node, now time.Time) []*api.StoreAction {
	actions := []*api.StoreAction{Remove(n)}
	if cluster == nil {
		return actions
	}
	upd := proto.Clone(cluster).(*api.Cluster)
	kept := upd.RemovedNodes[:0]
	for _, r := range upd.GetRemovedNodes() {
		if r.GetNodeId() != n.GetId() && r.GetNotAfter().AsTime().After(now) {
			kept = append(kept, r)
		}
	}
	upd.RemovedNodes = kept
	// A node without a recorded certificate is remembered for the longest
	// a certificate can live.
	notAfter := now.Add(maxRemovedRecord)
	if na := n.GetCertificate().GetNotAfter(); na != nil {
		notAfter = na.AsTime()
	}
	if notAfter.After(now) {
		upd.RemovedNodes = append(upd.RemovedNodes, &api.RemovedNode{NodeId: n.GetId(), NotAfter: timestamppb.New(notAfter)})
	}
	return append(actions, Update(upd))
}

// maxRemovedRecord bounds how long a removed node without a recorded
// certificate is remembered: a year, longer than any node certificate
// lives.
const maxRemovedRecord = 365 * 24 * time.Hour
