package netagent

import (
	"context"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/network/attach"
	"github.com/shoal-project/shoal/network/attach/netnstest"
	"github.com/shoal-project/shoal/network/lb/ipvs"
	"github.com/shoal-project/shoal/network/lb/nft"
	"github.com/shoal-project/shoal/network/overlay"
)

// TestKernelTeardown: a node that leaves runs a new agent (shoald leave
// is a process of its own) whose Teardown removes what the running one
// made: overlay devices, task veths, VIPs, shoal's nft tables and, where
// the kernel has IPVS (auto picks it there), the IPVS services.
func TestKernelTeardown(t *testing.T) {
	netnstest.RequireKernel(t)
	node, client := netnstest.New(t, "node"), netnstest.New(t, "cli")
	netnstest.Link(t, node, "ul0", kDataAddr+"/24", client, "eth0", kClient+"/24")
	task := netnstest.New(t, "web")
	// The running agent is left as shoald leaves it when it stops (Close,
	// at the end of the test, would remove what Teardown must find).
	running := newTestAgent(t, kNode, node, kDataAddr, "auto")
	ctx := context.Background()
	delta := kernelDelta()
	if err := running.Apply(ctx, delta, true); err != nil {
		t.Fatal(err)
	}
	if err := running.Attach(ctx, taskOf(delta.Endpoints[0]), task.Path); err != nil {
		t.Fatal(err)
	}
	before, err := Leftovers(node.Path)
	if err != nil {
		t.Fatal(err)
	}
	lbTable := nft.DefaultTable
	if running.ipvs {
		lbTable = ipvs.DefaultMarkTable
	}
	for _, want := range []string{"link " + overlay.BridgePrefix, "link " + overlay.VXLANPrefix, "link " + attach.HostVethPrefix, "nft table " + lbTable, "nft table shoal-nat", "VIP"} {
		if !strings.Contains(strings.Join(before, ", "), want) {
			t.Fatalf("before teardown: no %q in the node's state %v", want, before)
		}
	}

	leaving := newTestAgent(t, kNode, node, kDataAddr, "auto")
	if err := leaving.Teardown(); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if left, err := Leftovers(node.Path); err != nil || len(left) > 0 {
		t.Errorf("Teardown left %v (%v)", left, err)
	}
	if running.ipvs {
		if n := ipvsServices(t, node); n > 0 {
			t.Errorf("Teardown left %d IPVS services", n)
		}
	}
	if links := task.MustRun(t, "ip", "-o", "link", "show"); strings.Contains(links, "eth0") {
		t.Errorf("the task keeps its interface:\n%s", links)
	}
	if err := leaving.Teardown(); err == nil {
		t.Error("Teardown of a closed agent did not fail")
	}
}
