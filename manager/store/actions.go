package store

import (
	"fmt"

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
