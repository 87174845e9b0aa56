package scheduler

import (
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func TestFilterCheck(t *testing.T) {
	withState := func(s api.NodeState) *api.Node {
		return &api.Node{Id: "n", Status: &api.NodeStatus{State: s}}
	}
	withAvail := func(a api.NodeAvailability) *api.Node {
		return &api.Node{Id: "n", Spec: &api.NodeSpec{Availability: a}}
	}
	zone := func(z string) *api.Node {
		return &api.Node{Id: "n", Spec: &api.NodeSpec{Labels: map[string]string{"zone": z}}}
	}
	platform := func(os, arch string) *api.Node {
		return &api.Node{Id: "n", Description: &api.NodeDescription{Os: os, Arch: arch}}
	}
	eu := ConstraintFilter{Constraint: mustConstraint(t, "node.labels.zone==eu")}
	task := &api.Task{Id: "t"}
	wgKey := func(key []byte) *api.Node {
		return &api.Node{Id: "n", Description: &api.NodeDescription{WireguardKey: key}}
	}

	tests := []struct {
		name   string
		filter Filter
		node   *api.Node
		want   bool
	}{
		{"ready/ready", ReadyFilter{}, withState(api.NodeState_NODE_STATE_READY), true},
		{"ready/down", ReadyFilter{}, withState(api.NodeState_NODE_STATE_DOWN), false},
		{"ready/unknown", ReadyFilter{}, withState(api.NodeState_NODE_STATE_UNKNOWN), false},
		{"ready/disconnected", ReadyFilter{}, withState(api.NodeState_NODE_STATE_DISCONNECTED), false},
		{"ready/no status", ReadyFilter{}, &api.Node{Id: "n"}, false},
		{"availability/active", AvailabilityFilter{}, withAvail(api.NodeAvailability_NODE_AVAILABILITY_ACTIVE), true},
		{"availability/unset", AvailabilityFilter{}, withAvail(api.NodeAvailability_NODE_AVAILABILITY_UNSPECIFIED), true},
		{"availability/pause", AvailabilityFilter{}, withAvail(api.NodeAvailability_NODE_AVAILABILITY_PAUSE), false},
		{"availability/drain", AvailabilityFilter{}, withAvail(api.NodeAvailability_NODE_AVAILABILITY_DRAIN), false},
		{"constraint/match", eu, zone("eu"), true},
		{"constraint/mismatch", eu, zone("us"), false},
		{"constraint/no labels", eu, &api.Node{Id: "n"}, false},
		{"platform/unknown passes all", PlatformFilter{}, platform("windows", "arm64"), true},
		{"platform/match", PlatformFilter{OS: "linux", Arch: "amd64"}, platform("linux", "amd64"), true},
		{"platform/alias", PlatformFilter{OS: "linux", Arch: "x86_64"}, platform("linux", "amd64"), true},
		{"platform/wrong arch", PlatformFilter{OS: "linux", Arch: "arm64"}, platform("linux", "amd64"), false},
		{"platform/wrong os", PlatformFilter{OS: "windows"}, platform("linux", "amd64"), false},
		{"wireguard/key", WireGuardFilter{}, wgKey(make([]byte, 32)), true},
		{"wireguard/no key", WireGuardFilter{}, wgKey(nil), false},
		{"wireguard/no description", WireGuardFilter{}, &api.Node{Id: "n"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.filter.Check(task, tt.node); got != tt.want {
				t.Errorf("Check = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFilterExplain(t *testing.T) {
	eu := ConstraintFilter{Constraint: mustConstraint(t, " node.labels.zone == eu ")}
	tests := []struct {
		filter Filter
		n      int
		want   string
	}{
		{ReadyFilter{}, 1, "1 node is not ready"},
		{ReadyFilter{}, 3, "3 nodes are not ready"},
		{AvailabilityFilter{}, 1, "1 node is not available for new tasks (paused or drained)"},
		{AvailabilityFilter{}, 2, "2 nodes are not available for new tasks (paused or drained)"},
		{eu, 1, "1 node does not satisfy constraint node.labels.zone==eu"},
		{eu, 4, "4 nodes do not satisfy constraint node.labels.zone==eu"},
		{PlatformFilter{OS: "linux", Arch: "arm64"}, 2, "2 nodes do not match the image platform linux/arm64"},
		{WireGuardFilter{}, 1, "1 node lacks WireGuard (the task is on an encrypted network)"},
		{WireGuardFilter{}, 2, "2 nodes lack WireGuard (the task is on an encrypted network)"},
	}
	for _, tt := range tests {
		if got := tt.filter.Explain(tt.n); got != tt.want {
			t.Errorf("%T.Explain(%d) = %q, want %q", tt.filter, tt.n, got, tt.want)
		}
	}
}

func mustConstraint(t testing.TB, expr string) Constraint {
	t.Helper()
	cs, err := ParseConstraints([]string{expr})
	if err != nil {
		t.Fatal(err)
	}
	return cs[0]
}
