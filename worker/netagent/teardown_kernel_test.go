package netagent

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/network/attach"
	"github.com/shoal-project/shoal/network/attach/netnstest"
	"github.com/shoal-project/shoal/network/overlay"
)

// TestKernelTeardown: a node that leaves runs a new agent (shoald leave
// is a process of its own) whose Teardown removes what the running one
// made: overlay devices, task veths, VIPs and shoal's nft tables.
func TestKernelTeardown(t *testing.T) {
	netnstest.RequireKernel(t)
	node, client := netnstest.New(t, "node"), netnstest.New(t, "cli")
	netnstest.Link(t, node, "ul0", kDataAddr+"/24", client, "eth0", kClient+"/24")
	task := netnstest.New(t, "web")
	cfg := Config{
		NodeID:    kNode,
		DataAddr:  netip.MustParseAddr(kDataAddr),
		LBBackend: LBNFTables,
		StateDir:  t.TempDir(),
		NetNSPath: node.Path,
		DNSPort:   kDNSPort,
		Upstreams: []string{},
		Logger:    slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	running, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	delta := kernelDelta()
	if err := running.Apply(ctx, delta, true); err != nil {
		t.Fatal(err)
	}
	if err := running.Attach(ctx, taskOf(delta.Endpoints[0]), task.Path); err != nil {
		t.Fatal(err)
	}
	// The running agent is left as shoald leaves it when it stops: Close
	// would remove what Teardown must find.
	t.Cleanup(running.release)

	shoalState := func() []string {
		var found []string
		for _, line := range strings.Split(node.MustRun(t, "ip", "-o", "link", "show"), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(fields[1], ":"), "@")
			for _, p := range []string{overlay.BridgePrefix, overlay.VXLANPrefix, attach.HostVethPrefix} {
				if strings.HasPrefix(name, p) {
					found = append(found, "link "+name)
				}
			}
		}
		for _, line := range strings.Split(node.MustRun(t, "nft", "list", "tables"), "\n") {
			if strings.Contains(line, "shoal") {
				found = append(found, strings.TrimSpace(line))
			}
		}
		if addrs := node.MustRun(t, "ip", "-o", "addr", "show", "dev", "lo"); strings.Contains(addrs, vipLabel) {
			found = append(found, "VIP on lo")
		}
		return found
	}
	before := strings.Join(shoalState(), ", ")
	for _, want := range []string{"link " + overlay.BridgePrefix, "link " + overlay.VXLANPrefix, "link " + attach.HostVethPrefix, "shoal-lb", "shoal-nat", "VIP"} {
		if !strings.Contains(before, want) {
			t.Fatalf("before teardown: no %q in the node's state (%s)", want, before)
		}
	}

	leaving, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaving.Teardown(); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if left := shoalState(); len(left) > 0 {
		t.Errorf("Teardown left %s", strings.Join(left, ", "))
	}
	if links := task.MustRun(t, "ip", "-o", "link", "show"); strings.Contains(links, "eth0") {
		t.Errorf("the task keeps its interface:\n%s", links)
	}
	if err := leaving.Teardown(); err == nil {
		t.Error("Teardown of a closed agent did not fail")
	}
}
