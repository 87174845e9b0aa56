package lab

import (
	"maps"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func TestNodeStates(t *testing.T) {
	node := func(host string, state api.NodeState, leader bool) *api.Node {
		n := &api.Node{
			Description: &api.NodeDescription{Hostname: host},
			Status:      &api.NodeStatus{State: state},
		}
		if leader {
			n.ManagerStatus = &api.ManagerStatus{Leader: true}
		}
		return n
	}
	nodes := []*api.Node{
		node("manager1", api.NodeState_NODE_STATE_READY, true),
		node("manager2", api.NodeState_NODE_STATE_DOWN, false),
		node("worker1", api.NodeState_NODE_STATE_READY, false),
		node("worker2", api.NodeState_NODE_STATE_UNKNOWN, false),
	}
	wantStates := map[string]string{
		"manager1": "ready leader",
		"manager2": "down",
		"worker1":  "ready",
		"worker2":  "unknown",
	}
	if got := nodeStates(nodes); !maps.Equal(got, wantStates) {
		t.Errorf("nodeStates = %v, want %v", got, wantStates)
	}
	wantReady := map[string]bool{"manager1": true, "worker1": true}
	if got := readyNodes(nodes); !maps.Equal(got, wantReady) {
		t.Errorf("readyNodes = %v, want %v", got, wantReady)
	}
}
