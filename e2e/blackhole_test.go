package e2e

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/lab"
	"github.com/shoal-project/shoal/manager/dispatcher"
)

// heartbeatGrace is how long the leader lets a node stay silent before it
// marks it down and replaces its tasks: the lab runs shoald's defaults.
const heartbeatGrace = dispatcher.DefaultHeartbeatPeriod * dispatcher.DefaultGraceMultiplier

// TestBlackHoleFailover: the leader stops answering a worker without
// refusing anything, as a dead link or a frozen machine does, and the
// other managers elect a new leader. The worker must be in session with
// the new leader within two heartbeat graces of the fault, and no task may
// move: the new leader must never see the worker as down.
//
// Two faults, one after the other:
//   - black hole: nftables in the worker's namespace drops (not rejects)
//     all traffic to and from the leader, and in the leader's namespace all
//     traffic with the other managers, so they elect another;
//   - SIGSTOP: the leader's shoald is stopped; its kernel still holds and
//     acknowledges its connections, but nothing answers on them.
func TestBlackHoleFailover(t *testing.T) {
	c := newLabCluster(t, 3, 1)
	c.logsOnFailure(t)
	f := newFaults(t, c)
	const worker = "worker1"

	c.ctl(t, "manager1", "service", "create", "--name", "pinned", "--replicas", "2", "--constraint", "node.role==worker", tc.Image)
	c.converged(t, "pinned", want{Replicas: 2})
	workerID := nodeIDs(c.clusterNodes(t, "manager1"))[worker]
	bound := 2 * heartbeatGrace

	cases := []struct {
		name   string
		inject func(leader string, others []string) error
	}{
		{"black hole", func(leader string, others []string) error {
			if err := f.drop(worker, leader); err != nil {
				return err
			}
			return f.drop(leader, others...)
		}},
		{"SIGSTOP", func(leader string, _ []string) error { return f.pause(leader) }},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			// Settled: a leader every manager agrees on, the worker
			// Ready with its two tasks running.
			var leader string
			tc.Eventually(t, clusterConverge, "a settled cluster", func() (bool, string) {
				var err error
				leader, err = c.leaderSeenBy()
				if err != nil {
					return false, err.Error()
				}
				nodes, err := c.listNodesVia(leader)
				if err != nil {
					return false, err.Error()
				}
				for _, n := range nodes {
					if n.GetStatus().GetState() != api.NodeState_NODE_STATE_READY {
						return false, fmt.Sprintf("%s is %v", n.GetDescription().GetHostname(), n.GetStatus().GetState())
					}
				}
				return true, ""
			})
			before := c.converged(t, "pinned", want{Replicas: 2})
			var others []string
			for _, m := range c.names(lab.RoleManager) {
				if m != leader {
					others = append(others, m)
				}
			}
			offsets := logOffsets(c, others)

			start := time.Now()
			if err := tt.inject(leader, others); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: fault on leader %s at %s", tt.name, leader, start.Format("15:04:05.000"))

			// Wait well past the bound, so that a slow worker is
			// measured rather than only failed, and watch the worker's
			// state as the other managers see it meanwhile.
			var (
				sessionAt time.Time
				with      string
				downSeen  string
				newLeader string
			)
			for deadline := start.Add(2*bound + 10*time.Second); time.Now().Before(deadline) && sessionAt.IsZero(); {
				for _, m := range others {
					if logHas(c.node(t, m).LogFile(), offsets[m], `msg="session opened"`, "node="+workerID) {
						sessionAt, with = time.Now(), m
					}
				}
				if l, err := c.leaderSeenBy(leader); err == nil && newLeader == "" {
					newLeader = l
					t.Logf("%s: new leader %s seen after %v", tt.name, l, time.Since(start).Round(time.Millisecond))
				}
				if s := workerState(c, others, worker); s != "" && downSeen == "" {
					downSeen = fmt.Sprintf("%s after %v", s, time.Since(start).Round(time.Millisecond))
				}
				time.Sleep(100 * time.Millisecond)
			}
			// One more grace: a session that opened but was not kept
			// would let the worker fall down now.
			for end := time.Now().Add(heartbeatGrace); time.Now().Before(end) && downSeen == ""; time.Sleep(100 * time.Millisecond) {
				if s := workerState(c, others, worker); s != "" {
					downSeen = fmt.Sprintf("%s after %v", s, time.Since(start).Round(time.Millisecond))
				}
			}
			if err := f.healAll(); err != nil {
				t.Fatal(err)
			}

			if sessionAt.IsZero() {
				t.Errorf("%s: %s was not in session with another manager %v after the fault on leader %s (bound: 2 × heartbeat grace %v = %v); new leader seen: %q",
					tt.name, worker, time.Since(start).Round(time.Millisecond), leader, heartbeatGrace, bound, newLeader)
			} else {
				took := sessionAt.Sub(start)
				t.Logf("%s: %s in session with %s %v after the fault (bound %v)", tt.name, worker, with, took.Round(time.Millisecond), bound)
				if took > bound {
					t.Errorf("%s: %s took %v to be in session with the new leader %s, more than 2 × heartbeat grace %v = %v",
						tt.name, worker, took.Round(time.Millisecond), with, heartbeatGrace, bound)
				}
				// The manager that took the session must be the leader.
				tc.Eventually(t, clusterConverge, with+" the leader", func() (bool, string) {
					l, err := c.leaderSeenBy(leader)
					return err == nil && l == with, fmt.Sprintf("leader %q, %v", l, err)
				})
			}
			if downSeen != "" {
				t.Errorf("%s: the managers saw %s %s", tt.name, worker, downSeen)
			}

			// No task moved: once the worker is back (it may have to
			// reconnect after the heal), the same two tasks run and no
			// other was made.
			// Read through another manager: the faulted one may still be
			// cut off, and reads are linearizable (it would have to reach
			// the leader).
			after := c.converged(t, "pinned", want{Replicas: 2, Unseen: []string{leader}})
			if got, was := sortedKeys(after), sortedKeys(before); !slices.Equal(got, was) {
				t.Errorf("%s: running tasks of pinned were %v, now %v: tasks moved", tt.name, was, got)
			}
			if all := c.tasks(t, c.manager(t, leader), "pinned"); len(all) != len(before) {
				var ids []string
				for _, task := range all {
					ids = append(ids, fmt.Sprintf("%s(%v)", task.GetId(), task.GetStatus().GetState()))
				}
				sort.Strings(ids)
				t.Errorf("%s: pinned has %d tasks, want the %d it had: %v", tt.name, len(all), len(before), ids)
			}
		})
	}
}

// logOffsets is the current size of the named nodes' logs.
func logOffsets(c *labCluster, names []string) map[string]int64 {
	out := map[string]int64{}
	for _, name := range names {
		n, err := c.Node(name)
		if err != nil {
			continue
		}
		if st, err := os.Stat(n.LogFile()); err == nil {
			out[name] = st.Size()
		}
	}
	return out
}

// logHas says whether a line written to the log at path after offset
// holds every one of words.
func logHas(path string, offset int64, words ...string) bool {
	return lineWith(logSince(path, offset, 1<<20), words...)
}

// workerState is "down" (with the reason) when one of managers that
// answers sees the node as anything but Ready, else "".
func workerState(c *labCluster, managers []string, node string) string {
	for _, m := range managers {
		nodes, err := c.listNodesVia(m)
		if err != nil {
			continue
		}
		if n := byHostname(nodes, node); n != nil && n.GetStatus().GetState() != api.NodeState_NODE_STATE_READY {
			return fmt.Sprintf("%s (%s, as %s sees it)", strings.ToLower(strings.TrimPrefix(n.GetStatus().GetState().String(), "NODE_STATE_")), n.GetStatus().GetMessage(), m)
		}
	}
	return ""
}
