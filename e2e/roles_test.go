package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	tc "github.com/shoal-project/shoal/internal/testcluster"
)

// TestClusterRoles: an operator promotes a worker, demotes it again, and is
// stopped from demoting a manager when that would cost the quorum.
func TestClusterRoles(t *testing.T) {
	c := newLabCluster(t, 3, 1)
	c.logsOnFailure(t)

	role := func(name string) (api.NodeRole, bool, string) {
		n := byHostname(c.clusterNodes(t, "manager1"), name)
		if n == nil {
			return api.NodeRole_NODE_ROLE_UNSPECIFIED, false, "no such node"
		}
		ms := n.GetManagerStatus()
		return n.GetRole(), ms.GetReachable(), fmt.Sprintf("role %v, status %v, manager status %v", n.GetRole(), n.GetStatus().GetState(), ms)
	}

	c.ctl(t, "manager1", "node", "promote", "worker1")
	tc.Eventually(t, time.Minute, "worker1 a reachable manager", func() (bool, string) {
		r, reachable, state := role("worker1")
		return r == api.NodeRole_NODE_ROLE_MANAGER && reachable, state
	})
	// A write through the promoted node proves it serves the control API
	// as a manager (and forwards to the leader when it is not one: an
	// allocating call, made by the leader, and readable here at once).
	c.ctl(t, "worker1", "service", "create", "--detach", "--name", "via-promoted", "--replicas", "0", "--publish", "8090:80", tc.Image)
	if out := c.ctl(t, "worker1", "service", "inspect", "via-promoted"); !strings.Contains(out, "8090") {
		t.Errorf("service made through worker1 does not show its published port 8090 there:\n%s", out)
	}

	c.ctl(t, "manager1", "node", "demote", "worker1")
	tc.Eventually(t, time.Minute, "worker1 a worker again", func() (bool, string) {
		r, _, state := role("worker1")
		n := byHostname(c.clusterNodes(t, "manager1"), "worker1")
		return r == api.NodeRole_NODE_ROLE_WORKER && n.GetManagerStatus() == nil &&
			n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY, state
	})
	// The node itself restarts as a worker once its heartbeat tells it.
	tc.Eventually(t, time.Minute, "worker1 restarted as a worker", func() (bool, string) {
		out, err := c.try(t, "worker1", "service", "ls")
		return err != nil && strings.Contains(out, "this node is a worker"), out
	})

	// With manager2 down, demoting manager3 would leave one reachable
	// manager out of two: no quorum.
	if err := c.StopNode(t.Context(), "manager2"); err != nil {
		t.Fatal(err)
	}
	tc.Eventually(t, time.Minute, "manager2 seen down", func() (bool, string) {
		n := byHostname(c.clusterNodes(t, "manager1"), "manager2")
		return n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN, n.GetStatus().String()
	})
	out, err := c.try(t, "manager1", "node", "demote", "manager3")
	if err == nil || !strings.Contains(out, "quorum") {
		t.Fatalf("demoting manager3 with manager2 down was not refused for quorum:\n%s", out)
	}
	if r, _, state := role("manager3"); r != api.NodeRole_NODE_ROLE_MANAGER {
		t.Fatalf("refused demotion changed manager3: %s", state)
	}
	if err := c.StartNode(t.Context(), "manager2"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
}
