package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/shoal-project/shoal/internal/servicecheck"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/worker/netagent"
)

// shoaldLeave runs `shoald leave` on a lab node, in its namespace, with
// the flags its shoald runs with.
func (c *labCluster) shoaldLeave(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	n := c.node(t, name)
	ctx, cancel := context.WithTimeout(t.Context(), ctlTimeout)
	defer cancel()
	argv := append([]string{filepath.Join(c.bin, "shoald"), "leave",
		"--data-dir", n.DataDir, "--socket", n.Socket,
		"--containerd-address", c.ContainerdAddress(), "--containerd-namespace", n.Namespace,
	}, args...)
	return c.Exec(ctx, name, argv...)
}

// shoalKernelState lists what shoal made in a lab node's namespace:
// overlay bridges and VXLAN devices, task veths, VIPs, nft tables.
func (c *labCluster) shoalKernelState(t *testing.T, name string) []string {
	t.Helper()
	found, err := netagent.Leftovers(filepath.Join("/run/netns", c.node(t, name).Namespace))
	if err != nil {
		t.Fatalf("kernel state of %s: %v", name, err)
	}
	return found
}

// TestLeave: on a lab of two managers and two workers running a published
// service, worker2 leaves. It is gone from `node ls`, its shoald has
// stopped, its containers, containerd namespace, kernel state and data
// dir are gone, its replica runs elsewhere, and the mesh of the other
// nodes answers every request without it. manager2 is told to demote
// first, and with --force is demoted and leaves. Then the last manager
// tries to leave and is refused with the reason, changing nothing.
func TestLeave(t *testing.T) {
	c := newLabCluster(t, 2, 2)
	c.logsOnFailure(t)
	client, err := c.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	const m, leaver = "manager1", "worker2"
	addrOf := map[string]string{}
	for _, n := range c.Nodes() {
		addrOf[n.Name] = n.Addr.String()
	}

	c.ctl(t, m, "service", "create", "--name", "web", "--replicas", "4", "--publish", "8080:80", tc.Image)
	running := c.converged(t, "web", want{Replicas: 4})
	if perNode(running, hostnames(c.clusterNodes(t, m)))[leaver] == 0 {
		t.Fatalf("%s runs no replica of web: the test would not cover a node that leaves with tasks\n%s", leaver, c.ps(t, m, "web"))
	}
	if len(c.shoalKernelState(t, leaver)) == 0 {
		t.Fatalf("%s has no overlay, task interface or nft table before it leaves", leaver)
	}

	out, err := c.shoaldLeave(t, leaver)
	if err != nil {
		t.Fatalf("shoald leave on %s: %v\n%s", leaver, err, out)
	}
	t.Logf("shoald leave on %s:\n%s", leaver, out)
	if n := byHostname(c.clusterNodes(t, m), leaver); n != nil {
		t.Errorf("%s still in node ls after it left: %v", leaver, n)
	}
	if up, err := c.Running(leaver); err != nil || up {
		t.Errorf("shoald on %s still runs after leave (%v)", leaver, err)
	}
	if left := c.shoalKernelState(t, leaver); len(left) > 0 {
		t.Errorf("leave left kernel state on %s: %s", leaver, strings.Join(left, ", "))
	}
	n := c.node(t, leaver)
	if cs := c.containers(t, leaver); len(cs) > 0 {
		t.Errorf("leave left %d containers on %s: %v", len(cs), leaver, cs)
	}
	if slices.Contains(containerdNamespaces(t, c.ContainerdAddress()), n.Namespace) {
		t.Errorf("leave left containerd namespace %s", n.Namespace)
	}
	// The lab keeps the node's log in its data dir: a file shoal did not
	// make, so the directory stays with that file alone.
	if entries, err := os.ReadDir(n.DataDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Error(err)
	} else if len(entries) > 1 || (len(entries) == 1 && entries[0].Name() != filepath.Base(n.LogFile())) {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("leave left %v in the data dir %s", names, n.DataDir)
	}

	// The replica moved, and the other nodes' meshes send to the running
	// tasks only: no backend and no VXLAN endpoint on the node that left.
	running = c.converged(t, "web", want{Replicas: 4, NotOn: []string{leaver}, Unseen: []string{leaver}})
	for _, name := range []string{m, "manager2", "worker1"} {
		tc.Eventually(t, clusterConverge, name+" forgets "+leaver+"'s VXLAN endpoint", func() (bool, string) {
			fdb, err := c.Exec(t.Context(), name, "bridge", "fdb", "show")
			return err == nil && !strings.Contains(fdb, "dst "+addrOf[leaver]+" "), fdb
		})
		rep := c.loadFrom(t, client, meshRequests, "http://"+addrOf[name]+":8080")
		servicecheck.ServedOnlyBy(t, "web through "+name+" after "+leaver+" left", rep, meshRequests, servicecheck.TaskNames(running))
	}

	// A manager is told to demote first; --force demotes it (the other
	// manager keeps the quorum) and it leaves as a worker.
	out, err = c.shoaldLeave(t, "manager2")
	if err == nil || !strings.Contains(out, "demote it first") {
		t.Fatalf("shoald leave on manager2: %v, want a refusal saying to demote it first\n%s", err, out)
	}
	if up, _ := c.Running("manager2"); !up || byHostname(c.clusterNodes(t, m), "manager2") == nil {
		t.Fatal("refused leave on manager2 stopped it or removed it")
	}
	out, err = c.shoaldLeave(t, "manager2", "--force")
	if err != nil {
		t.Fatalf("shoald leave --force on manager2: %v\n%s", err, out)
	}
	t.Logf("shoald leave --force on manager2:\n%s", out)
	if n := byHostname(c.clusterNodes(t, m), "manager2"); n != nil {
		t.Errorf("manager2 still in node ls after it left: %v", n)
	}
	if left := c.shoalKernelState(t, "manager2"); len(left) > 0 {
		t.Errorf("leave left kernel state on manager2: %s", strings.Join(left, ", "))
	}
	gone := []string{leaver, "manager2"}
	c.converged(t, "web", want{Replicas: 4, NotOn: gone, Unseen: gone})

	// The last manager may not leave: that would end the cluster.
	before := hostnames(c.clusterNodes(t, m))
	out, err = c.shoaldLeave(t, m)
	if err == nil || !strings.Contains(out, "last manager") {
		t.Fatalf("shoald leave on the last manager: %v, want a refusal naming the last manager\n%s", err, out)
	}
	if up, _ := c.Running(m); !up {
		t.Fatalf("refused leave stopped %s's shoald", m)
	}
	if after := hostnames(c.clusterNodes(t, m)); len(after) != len(before) {
		t.Errorf("refused leave changed node ls: %v, was %v", after, before)
	}
	if _, err := os.Stat(c.node(t, m).DataDir); err != nil {
		t.Errorf("refused leave touched the data dir: %v", err)
	}
	c.converged(t, "web", want{Replicas: 4, NotOn: gone, Unseen: gone})
}

// containerdNamespaces lists containerd's namespaces.
func containerdNamespaces(t *testing.T, address string) []string {
	t.Helper()
	cl, err := containerd.New(address)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	nss, err := cl.NamespaceService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return nss
}
