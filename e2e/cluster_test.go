package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/image"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/lab"
)

// TestCluster is an operator's session with a five-node cluster: three
// managers and two workers. Each subtest first waits for the cluster to
// be whole again, so one failure does not hide the others.
func TestCluster(t *testing.T) {
	c := newLabCluster(t, 3, 2)
	const service = "web"
	replicas := 6

	// whole waits until every node runs and is Ready, as a subtest that
	// failed halfway may have left one stopped or cut off.
	whole := func(t *testing.T) {
		t.Helper()
		c.logsOnFailure(t)
		for _, name := range c.names("") {
			if err := c.SetLinkUp(name); err != nil {
				t.Fatal(err)
			}
			if running, err := c.Running(name); err == nil && !running {
				if err := c.StartNode(t.Context(), name); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := c.WaitReady(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	// haveService makes sure the service exists with its replicas and has
	// converged, for subtests that need it whatever happened before.
	haveService := func(t *testing.T) map[string]*api.Task {
		t.Helper()
		m := c.manager(t)
		if _, err := c.try(t, m, "service", "inspect", service); err != nil {
			c.ctl(t, m, "service", "create", "--detach", "--name", service, "--replicas", strconv.Itoa(replicas), tc.Image)
		} else {
			c.ctl(t, m, "service", "scale", "--detach", service+"="+strconv.Itoa(replicas))
		}
		return c.converged(t, service, want{Replicas: replicas})
	}

	t.Run("node ls shows every node", func(t *testing.T) {
		whole(t)
		m := c.manager(t)
		tc.Eventually(t, clusterConverge, "5 ready nodes, one leader, two reachable managers", func() (bool, string) {
			table := c.ctl(t, m, "node", "ls")
			nodes := c.clusterNodes(t, m)
			var ready, leader, reachable, workers []string
			for _, n := range nodes {
				name := n.GetDescription().GetHostname()
				if n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY {
					ready = append(ready, name)
				}
				switch ms := n.GetManagerStatus(); {
				case n.GetRole() != api.NodeRole_NODE_ROLE_MANAGER:
					workers = append(workers, name)
				case ms.GetLeader():
					leader = append(leader, name)
				case ms.GetReachable():
					reachable = append(reachable, name)
				}
			}
			ok := len(nodes) == 5 && len(ready) == 5 && len(leader) == 1 && len(reachable) == 2 && len(workers) == 2 &&
				strings.Count(table, "Ready") == 5 && strings.Count(table, "Leader") == 1 && strings.Count(table, "Reachable") == 2
			return ok, fmt.Sprintf("ready %v, leader %v, reachable %v, workers %v\n%s", ready, leader, reachable, workers, table)
		})
	})

	t.Run("join refused leaves nothing behind", func(t *testing.T) {
		whole(t)
		m := c.manager(t)
		before := len(c.clusterNodes(t, m))
		token := strings.TrimSpace(c.ctl(t, m, "cluster", "join-token", "-q", "worker"))
		prefix, secret, ok := cutLast(token, "-")
		if !ok || !strings.HasPrefix(prefix, "SHOAL-1-") {
			t.Fatalf("join token %q is not SHOAL-1-<digest>-<secret>", token)
		}
		digest := strings.TrimPrefix(prefix, "SHOAL-1-")
		c.ctl(t, m, "cluster", "join-token", "--rotate", "-q", "worker")
		if rotated := strings.TrimSpace(c.ctl(t, m, "cluster", "join-token", "-q", "worker")); rotated == token {
			t.Fatalf("join-token --rotate left the token as it was: %s", rotated)
		}

		for _, tt := range []struct {
			name, token, want string
		}{
			{"wrong secret", prefix + "-" + otherSecret(secret), "not accepted"},
			{"rotated token", token, "rotated"},
			{"malformed token", "SHOAL-1-nonsense", "malformed"},
			{"token of another cluster", "SHOAL-1-" + reverse(digest) + "-" + secret, "not the one the join token names"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				dir := t.TempDir()
				data := filepath.Join(dir, "data")
				// A namespace with the lab's prefix: lab down removes it
				// too, should the clean-up below not run.
				ns := lab.NamespacePrefix + "joiner"
				t.Cleanup(func() {
					ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
					defer cancel()
					if err := image.PurgeNamespace(ctx, c.ContainerdAddress(), ns); err != nil {
						t.Errorf("remove containerd namespace %s: %v", ns, err)
					}
				})
				// From the host, over the lab bridge, as a new machine
				// would: the bridge's address is the joiner's.
				out, err := c.run("shoald", "join", "--token", tt.token, c.node(t, m).AdvertiseAddr(),
					"--data-dir", data, "--socket", filepath.Join(dir, "shoald.sock"),
					"--containerd-address", c.ContainerdAddress(), "--containerd-namespace", ns,
					"--hostname", "joiner", "--advertise-addr", c.Gateway().String())
				var exit *exec.ExitError
				if !errors.As(err, &exit) {
					t.Fatalf("shoald join with a %s: err = %v, want a non-zero exit\n%s", tt.name, err, out)
				}
				if !strings.Contains(out, tt.want) {
					t.Errorf("shoald join with a %s: the error does not say %q:\n%s", tt.name, tt.want, out)
				}
				if strings.Contains(out, "panic") || strings.Contains(out, "rpc error: code") {
					t.Errorf("shoald join with a %s: the error is not for a person:\n%s", tt.name, out)
				}
				for _, left := range []string{"node.json", "certificates", "admin", "raft"} {
					if _, err := os.Stat(filepath.Join(data, left)); err == nil {
						t.Errorf("the refused join left %s in its data dir", left)
					}
				}
				if _, err := os.Stat(filepath.Join(dir, "shoald.sock")); err == nil {
					t.Errorf("the refused join left its socket")
				}
				nodes := c.clusterNodes(t, m)
				if len(nodes) != before || byHostname(nodes, "joiner") != nil {
					t.Errorf("the refused join changed the cluster: %d nodes, had %d:\n%s", len(nodes), before, c.ctl(t, m, "node", "ls"))
				}
				ctrs, err := tc.NamespaceContainers(ns)
				if err != nil {
					t.Fatal(err)
				}
				if len(ctrs) > 0 {
					t.Errorf("the refused join left containers: %+v", ctrs)
				}
			})
		}
	})

	t.Run("a service spreads over the nodes", func(t *testing.T) {
		whole(t)
		m := c.manager(t)
		if _, err := c.try(t, m, "service", "inspect", service); err == nil {
			c.ctl(t, m, "service", "rm", service)
		}
		c.ctl(t, m, "service", "create", "--detach", "--name", service, "--replicas", strconv.Itoa(replicas), tc.Image)
		running := c.converged(t, service, want{Replicas: replicas})
		counts := perNode(running, hostnames(c.clusterNodes(t, m)))
		for _, name := range c.names("") {
			if counts[name] < 1 || counts[name] > 2 {
				t.Errorf("%d replicas on %s; 6 replicas on 5 nodes should put 1 or 2 on each: %v\n%s", counts[name], name, counts, c.ps(t, m, service))
			}
		}
	})

	t.Run("leader killed: another manager leads and nothing is lost", func(t *testing.T) {
		whole(t)
		before := haveService(t)
		old := leaders(c.clusterNodes(t, c.manager(t)))
		if len(old) != 1 {
			t.Fatalf("leaders before: %v", old)
		}
		leader := old[0]
		if err := c.KillNode(t.Context(), leader); err != nil {
			t.Fatal(err)
		}
		survivor := c.manager(t, leader)

		var next string
		tc.Eventually(t, clusterConverge, "a new leader", func() (bool, string) {
			out, err := c.try(t, survivor, "node", "ls", "--format", "json")
			if err != nil {
				return false, out
			}
			nodes := decodeLines(t, out, func() *api.Node { return &api.Node{} })
			l := leaders(nodes)
			if len(l) != 1 || l[0] == leader {
				return false, fmt.Sprintf("leaders %v\n%s", l, c.ctl(t, survivor, "node", "ls"))
			}
			next = l[0]
			return true, ""
		})
		if byHostname(c.clusterNodes(t, survivor), next).GetRole() != api.NodeRole_NODE_ROLE_MANAGER {
			t.Fatalf("the new leader %s is not a manager", next)
		}

		replicas = 8
		tc.Eventually(t, clusterConverge, "a write through a surviving manager", func() (bool, string) {
			out, err := c.try(t, survivor, "service", "scale", "--detach", service+"="+strconv.Itoa(replicas))
			return err == nil, out
		})
		after := c.converged(t, service, want{Replicas: replicas, NotOn: []string{leader}, Unseen: []string{leader}})
		names := hostnames(c.clusterNodes(t, survivor))
		for id, task := range before {
			if names[task.GetNodeId()] == leader {
				continue
			}
			if after[id] == nil {
				t.Errorf("task %s (slot %d on %s) was running before the leader died and is no longer:\n%s",
					id, task.GetSlot(), names[task.GetNodeId()], c.ps(t, survivor, service))
			}
		}

		if err := c.StartNode(t.Context(), leader); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReady(t.Context(), leader); err != nil {
			t.Fatal(err)
		}
		tc.Eventually(t, clusterConverge, leader+" back as a reachable follower", func() (bool, string) {
			nodes := c.clusterNodes(t, survivor)
			n := byHostname(nodes, leader)
			l := leaders(nodes)
			ok := n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY && n.GetRole() == api.NodeRole_NODE_ROLE_MANAGER &&
				n.GetManagerStatus().GetReachable() && !n.GetManagerStatus().GetLeader() && len(l) == 1
			return ok, c.ctl(t, survivor, "node", "ls")
		})
		// Back, the old leader stops the containers of the tasks that
		// moved away while it was gone.
		c.converged(t, service, want{Replicas: replicas})
	})

	t.Run("worker cut off: its tasks move, and its stale containers stop when it is back", func(t *testing.T) {
		whole(t)
		running := haveService(t)
		m := c.manager(t)
		counts := perNode(running, hostnames(c.clusterNodes(t, m)))
		victim := ""
		for _, name := range c.names(lab.RoleWorker) {
			if victim == "" || counts[name] > counts[victim] {
				victim = name
			}
		}
		if counts[victim] == 0 {
			t.Fatalf("no worker runs a task of %s: %v\n%s", service, counts, c.ps(t, m, service))
		}
		victimID := nodeIDs(c.clusterNodes(t, m))[victim]
		var stale []string
		for id, task := range running {
			if task.GetNodeId() == victimID {
				stale = append(stale, id)
			}
		}

		if err := c.SetLinkDown(victim); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.SetLinkUp(victim) })
		tc.Eventually(t, clusterConverge, victim+" down", func() (bool, string) {
			n := byHostname(c.clusterNodes(t, m), victim)
			return n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN, c.ctl(t, m, "node", "ls")
		})
		c.converged(t, service, want{Replicas: replicas, NotOn: []string{victim}, Unseen: []string{victim}})
		// Cut off, the worker cannot know its tasks moved, and losing the
		// managers must not stop what it runs.
		runningThere := map[string]bool{}
		for _, ctr := range c.containers(t, victim) {
			runningThere[ctr.TaskID] = ctr.Status == "running"
		}
		for _, id := range stale {
			if !runningThere[id] {
				t.Errorf("cut off, %s stopped the container of task %s", victim, id)
			}
		}

		if err := c.SetLinkUp(victim); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReady(t.Context(), victim); err != nil {
			t.Fatal(err)
		}
		tc.Eventually(t, clusterConverge, "the stale containers on "+victim+" stopped", func() (bool, string) {
			var left []string
			for _, ctr := range c.containers(t, victim) {
				if ctr.Status == "running" && slices.Contains(stale, ctr.TaskID) {
					left = append(left, ctr.ID)
				}
			}
			return len(left) == 0, fmt.Sprintf("still running on %s: %v", victim, left)
		})
		c.converged(t, service, want{Replicas: replicas})
	})

	t.Run("drained node: its tasks move, and it takes tasks again once active", func(t *testing.T) {
		whole(t)
		running := haveService(t)
		m := c.manager(t)
		counts := perNode(running, hostnames(c.clusterNodes(t, m)))
		drained := ""
		for _, name := range c.names(lab.RoleWorker) {
			if drained == "" || counts[name] > counts[drained] {
				drained = name
			}
		}
		if counts[drained] == 0 {
			t.Fatalf("no worker runs a task of %s: %v\n%s", service, counts, c.ps(t, m, service))
		}

		c.ctl(t, m, "node", "update", "--availability", "drain", drained)
		t.Cleanup(func() { c.try(t, m, "node", "update", "--availability", "active", drained) })
		if n := byHostname(c.clusterNodes(t, m), drained); n.GetSpec().GetAvailability() != api.NodeAvailability_NODE_AVAILABILITY_DRAIN {
			t.Fatalf("after drain, %s has availability %v:\n%s", drained, n.GetSpec().GetAvailability(), c.ctl(t, m, "node", "ls"))
		}
		c.converged(t, service, want{Replicas: replicas, NotOn: []string{drained}})

		c.ctl(t, m, "node", "update", "--availability", "active", drained)
		if n := byHostname(c.clusterNodes(t, m), drained); n.GetSpec().GetAvailability() != api.NodeAvailability_NODE_AVAILABILITY_ACTIVE {
			t.Fatalf("after active, %s has availability %v:\n%s", drained, n.GetSpec().GetAvailability(), c.ctl(t, m, "node", "ls"))
		}
		// The node now runs nothing, so spreading puts the next replica
		// there.
		replicas++
		c.ctl(t, m, "service", "scale", "--detach", service+"="+strconv.Itoa(replicas))
		running = c.converged(t, service, want{Replicas: replicas})
		if n := perNode(running, hostnames(c.clusterNodes(t, m)))[drained]; n != 1 {
			t.Errorf("after scaling up, %s runs %d replicas, want 1 (it was the only empty node):\n%s", drained, n, c.ps(t, m, service))
		}
	})

	t.Run("all managers restarted: state back from disk", func(t *testing.T) {
		whole(t)
		haveService(t)
		m := c.manager(t)
		nodesBefore := c.clusterNodes(t, m)
		servicesBefore := decodeLines(t, c.ctl(t, m, "service", "ls", "--format", "json"), func() *api.Service { return &api.Service{} })
		tasksBefore := c.tasks(t, m, service)

		// All at once, so that no manager runs on alone for long.
		managers := c.names(lab.RoleManager)
		var wg sync.WaitGroup
		errs := make([]error, len(managers))
		for i, name := range managers {
			wg.Go(func() { errs[i] = c.StopNode(t.Context(), name) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		for _, name := range managers {
			if err := c.StartNode(t.Context(), name); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.WaitReady(t.Context()); err != nil {
			t.Fatal(err)
		}

		tc.Eventually(t, clusterConverge, "the same nodes, all ready, one leader", func() (bool, string) {
			nodes := c.clusterNodes(t, m)
			table := c.ctl(t, m, "node", "ls")
			if len(nodes) != len(nodesBefore) || len(leaders(nodes)) != 1 {
				return false, table
			}
			for _, b := range nodesBefore {
				n := byHostname(nodes, b.GetDescription().GetHostname())
				if n.GetId() != b.GetId() || n.GetRole() != b.GetRole() || n.GetStatus().GetState() != api.NodeState_NODE_STATE_READY {
					return false, table
				}
			}
			return true, ""
		})
		servicesAfter := decodeLines(t, c.ctl(t, m, "service", "ls", "--format", "json"), func() *api.Service { return &api.Service{} })
		if len(servicesAfter) != len(servicesBefore) {
			t.Fatalf("%d services after the restart, %d before:\n%s", len(servicesAfter), len(servicesBefore), c.ctl(t, m, "service", "ls"))
		}
		for i := range servicesBefore {
			if servicesAfter[i].GetId() != servicesBefore[i].GetId() || !proto.Equal(servicesAfter[i].GetSpec(), servicesBefore[i].GetSpec()) {
				t.Errorf("service after the restart:\n%v\nbefore:\n%v", servicesAfter[i], servicesBefore[i])
			}
		}
		tasksAfter := map[string]bool{}
		for _, task := range c.tasks(t, m, service) {
			tasksAfter[task.GetId()] = true
		}
		for _, task := range tasksBefore {
			// History may be pruned, but never the tasks that should run.
			if task.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && !tasksAfter[task.GetId()] {
				t.Errorf("task %s (slot %d) is gone after the restart:\n%s", task.GetId(), task.GetSlot(), c.ps(t, m, service))
			}
		}
		c.converged(t, service, want{Replicas: replicas})
	})
}

// cutLast splits s around the last sep.
func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// otherSecret returns a secret of the same length and alphabet that
// differs from s in every character.
func otherSecret(s string) string {
	b := []byte(s)
	for i := range b {
		if b[i] == '0' {
			b[i] = '1'
		} else {
			b[i] = '0'
		}
	}
	return string(b)
}

func reverse(s string) string {
	b := []byte(s)
	slices.Reverse(b)
	return string(b)
}

// TestClusterSecurity: every connection to the cluster port is mutual
// TLS, and a certificate only lets its holder do what its role and node
// allow.
func TestClusterSecurity(t *testing.T) {
	c := newLabCluster(t, 1, 2)
	c.logsOnFailure(t)
	m := c.node(t, "manager1")
	addr := m.AdvertiseAddr()
	ids := nodeIDs(c.clusterNodes(t, m.Name))
	w1, w2 := c.node(t, "worker1"), c.node(t, "worker2")

	t.Run("a service's environment is in no file under any data dir", func(t *testing.T) {
		// The managers seal raft; every node (the manager too) seals the
		// assignments it caches, which hold its tasks' env. The echo
		// image does not print its env, so task logs are scanned too.
		const secret = "e2e-cached-secret-5c2a9e"
		c.ctl(t, m.Name, "service", "create", "--name", "vault", "--mode", "global", "--env", "DB_PASSWORD="+secret, tc.Image)
		defer c.ctl(t, m.Name, "service", "rm", "vault")
		c.globalOn(t, "vault", c.names(""))
		cache := func(n lab.Node) string { return filepath.Join(n.DataDir, "worker", "assignments.pb") }
		tc.Eventually(t, 30*time.Second, "every node's assignments saved", func() (bool, string) {
			for _, name := range c.names("") {
				if _, err := os.Stat(cache(c.node(t, name))); err != nil {
					return false, err.Error()
				}
			}
			return true, ""
		})
		// Saves follow a task's status changes by 100 ms (persistDelay).
		time.Sleep(time.Second)
		for _, name := range c.names("") {
			n := c.node(t, name)
			var cacheScanned bool
			err := filepath.WalkDir(n.DataDir, func(path string, d fs.DirEntry, err error) error {
				if errors.Is(err, fs.ErrNotExist) {
					return nil // a file replaced meanwhile (a save's .tmp)
				}
				if err != nil || d.IsDir() || !d.Type().IsRegular() {
					return err
				}
				b, err := os.ReadFile(path)
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				if err != nil {
					return err
				}
				if path == cache(n) && len(b) > 0 {
					cacheScanned = true
				}
				if bytes.Contains(b, []byte(secret)) {
					t.Errorf("%s: %s holds the service's env value in the clear", name, path)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !cacheScanned {
				t.Errorf("%s: its saved assignments %s were not scanned", name, cache(n))
			}
		}
	})

	t.Run("admin certificate over TLS", func(t *testing.T) {
		out, err := c.run("shoalctl", "--host", addr, "--tls-dir", filepath.Join(m.DataDir, "admin"), "node", "ls")
		if err != nil {
			t.Fatalf("shoalctl --host %s with the admin certificate: %v\n%s", addr, err, out)
		}
		for _, name := range c.names("") {
			if !strings.Contains(out, name) {
				t.Errorf("node ls over TLS lacks %s:\n%s", name, out)
			}
		}
	})

	t.Run("worker certificate may not call the control API", func(t *testing.T) {
		out, err := c.run("shoalctl", "--host", addr, "--tls-dir", credentialsDir(w1), "node", "ls")
		if err == nil {
			t.Fatalf("shoalctl with a worker certificate listed the nodes:\n%s", out)
		}
		if !strings.Contains(out, "worker certificates may not call") {
			t.Errorf("shoalctl with a worker certificate: the error does not say why:\n%s", out)
		}
		control := api.NewControlClient(dialCluster(t, addr, credentialsDir(w1)))
		ctx, cancel := context.WithTimeout(t.Context(), rpcTimeout)
		defer cancel()
		_, err = control.ListNodes(ctx, &api.ListNodesRequest{})
		wantCode(t, "ListNodes with a worker certificate", err, codes.PermissionDenied)
		_, err = control.UpdateService(ctx, &api.UpdateServiceRequest{})
		wantCode(t, "UpdateService with a worker certificate", err, codes.PermissionDenied)
	})

	t.Run("worker may not open another node's session", func(t *testing.T) {
		d := api.NewDispatcherClient(dialCluster(t, addr, credentialsDir(w1)))
		ctx, cancel := context.WithTimeout(t.Context(), rpcTimeout)
		defer cancel()
		s, err := d.Session(ctx, &api.SessionRequest{NodeId: ids[w2.Name]})
		if err == nil {
			_, err = s.Recv()
		}
		wantCode(t, "Session for worker2 with worker1's certificate", err, codes.PermissionDenied)
	})

	t.Run("worker may not use another node's session", func(t *testing.T) {
		// worker2's shoald stops, so that its session is the one opened
		// here with its certificate, and nobody replaces it meanwhile.
		if err := c.StopNode(t.Context(), w2.Name); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := c.StartNode(t.Context(), w2.Name); err != nil {
				t.Error(err)
			}
			if err := c.WaitReady(t.Context(), w2.Name); err != nil {
				t.Error(err)
			}
		}()
		ctx, cancel := context.WithTimeout(t.Context(), rpcTimeout)
		defer cancel()
		own := api.NewDispatcherClient(dialCluster(t, addr, credentialsDir(w2)))
		s, err := own.Session(ctx, &api.SessionRequest{NodeId: ids[w2.Name]})
		if err != nil {
			t.Fatalf("worker2's own session: %v", err)
		}
		msg, err := s.Recv()
		if err != nil {
			t.Fatalf("worker2's own session: %v", err)
		}

		other := api.NewDispatcherClient(dialCluster(t, addr, credentialsDir(w1)))
		a, err := other.Assignments(ctx, &api.AssignmentsRequest{SessionId: msg.GetSessionId()})
		if err == nil {
			_, err = a.Recv()
		}
		wantCode(t, "Assignments of worker2's session with worker1's certificate", err, codes.PermissionDenied)
		_, err = other.Heartbeat(ctx, &api.HeartbeatRequest{SessionId: msg.GetSessionId()})
		wantCode(t, "Heartbeat of worker2's session with worker1's certificate", err, codes.PermissionDenied)
		_, err = other.UpdateTaskStatus(ctx, &api.UpdateTaskStatusRequest{SessionId: msg.GetSessionId()})
		wantCode(t, "UpdateTaskStatus of worker2's session with worker1's certificate", err, codes.PermissionDenied)
	})

	t.Run("plaintext client refused", func(t *testing.T) {
		conn := dialWith(t, addr, insecure.NewCredentials())
		ctx, cancel := context.WithTimeout(t.Context(), rpcTimeout)
		defer cancel()
		resp, err := api.NewControlClient(conn).ListNodes(ctx, &api.ListNodesRequest{})
		if err == nil {
			t.Fatalf("a plaintext client listed %d nodes", len(resp.GetNodes()))
		}
		t.Logf("plaintext client: %v", err)
		_, err = api.NewCAClient(conn).GetRootCACertificate(ctx, &api.GetRootCACertificateRequest{})
		if err == nil {
			t.Fatal("a plaintext client got the root CA certificate")
		}
	})

	t.Run("TLS client without a certificate refused", func(t *testing.T) {
		creds, err := identity.LoadCredentials(credentialsDir(w1))
		if err != nil {
			t.Fatal(err)
		}
		roots, err := creds.Pool()
		if err != nil {
			t.Fatal(err)
		}
		conn := dialWith(t, addr, credentials.NewTLS(identity.ClientConfig(nil, roots, identity.ManagerServerName, identity.ALPNGRPC)))
		ctx, cancel := context.WithTimeout(t.Context(), rpcTimeout)
		defer cancel()
		_, err = api.NewControlClient(conn).ListNodes(ctx, &api.ListNodesRequest{})
		wantCode(t, "ListNodes without a client certificate", err, codes.Unauthenticated)
	})

	t.Run("removed node's certificate refused", func(t *testing.T) {
		c.ctl(t, m.Name, "node", "rm", "--force", w2.Name)
		if n := byHostname(c.clusterNodes(t, m.Name), w2.Name); n != nil {
			t.Fatalf("node rm --force left %s:\n%s", w2.Name, c.ctl(t, m.Name, "node", "ls"))
		}
		conn := dialCluster(t, addr, credentialsDir(w2))
		ctx, cancel := context.WithTimeout(t.Context(), rpcTimeout)
		defer cancel()
		s, err := api.NewDispatcherClient(conn).Session(ctx, &api.SessionRequest{NodeId: ids[w2.Name]})
		if err == nil {
			_, err = s.Recv()
		}
		wantCode(t, "Session of the removed worker2", err, codes.PermissionDenied)
		keyPEM, csrPEM, err := identity.NewKeyAndCSR()
		if err != nil || len(keyPEM) == 0 {
			t.Fatal(err)
		}
		_, err = api.NewCAClient(conn).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{CsrPem: csrPEM})
		wantCode(t, "RenewNodeCertificate of the removed worker2", err, codes.PermissionDenied)
		// Nor does the removed node come back by itself.
		if n := byHostname(c.clusterNodes(t, m.Name), w2.Name); n != nil {
			t.Errorf("removed %s is back:\n%s", w2.Name, c.ctl(t, m.Name, "node", "ls"))
		}
	})
}

// rpcTimeout bounds one RPC to a lab node, which answers in milliseconds
// unless it is wedged.
const rpcTimeout = 30 * time.Second

// wantCode fails t unless err is a gRPC status with code.
func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if err == nil {
		t.Errorf("%s succeeded, want %v", what, code)
		return
	}
	if got := status.Code(err); got != code {
		t.Errorf("%s: %v, want %v", what, err, code)
	}
}
