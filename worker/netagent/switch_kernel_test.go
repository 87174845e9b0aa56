package netagent

import (
	"context"
	"strings"
	"testing"

	mobyipvs "github.com/moby/ipvs"

	"github.com/shoal-project/shoal/network/attach/netnstest"
	"github.com/shoal-project/shoal/network/lb/ipvs"
	"github.com/shoal-project/shoal/network/lb/lbtest"
	"github.com/shoal-project/shoal/network/lb/nft"
)

// TestKernelOtherBackendRemoved: a node whose --lb-backend changed starts
// a new agent over the rules of the old one (shoald stops without
// removing them), and the new agent removes what the other backend left
// before it programs its own: the nft DNAT would otherwise take published
// traffic before IPVS, and the IPVS marks and services would stay. The
// IPVS half needs a kernel with IPVS (the VM tier); without it, the IPVS
// marker's table stands for what an IPVS run leaves.
func TestKernelOtherBackendRemoved(t *testing.T) {
	t.Run("nftables after ipvs", func(t *testing.T) {
		netnstest.RequireKernel(t)
		node := switchNode(t)
		if ipvs.Available() {
			stopped(programmed(t, newTestAgent(t, kNode, node, kDataAddr, LBIPVS)))
			if ours := ipvsServices(t, node); ours == 0 {
				t.Fatal("the IPVS agent programmed no IPVS service")
			}
		} else {
			node.MustRun(t, "nft", "add", "table", "inet", ipvs.DefaultMarkTable)
		}
		programmed(t, newTestAgent(t, kNode, node, kDataAddr, LBNFTables))
		if tables := node.MustRun(t, "nft", "list", "tables"); strings.Contains(tables, ipvs.DefaultMarkTable) || !strings.Contains(tables, nft.DefaultTable) {
			t.Errorf("tables after the nftables agent started, want %s and not %s:\n%s", nft.DefaultTable, ipvs.DefaultMarkTable, tables)
		}
		if ipvs.Available() {
			if ours := ipvsServices(t, node); ours != 0 {
				t.Errorf("%d IPVS services of the earlier run are left", ours)
			}
		}
	})
	t.Run("ipvs after nftables", func(t *testing.T) {
		lbtest.RequireIPVS(t, ipvs.Available())
		node := switchNode(t)
		stopped(programmed(t, newTestAgent(t, kNode, node, kDataAddr, LBNFTables)))
		programmed(t, newTestAgent(t, kNode, node, kDataAddr, LBIPVS))
		if tables := node.MustRun(t, "nft", "list", "tables"); strings.Contains(tables, nft.DefaultTable) || !strings.Contains(tables, ipvs.DefaultMarkTable) {
			t.Errorf("tables after the IPVS agent started, want %s and not %s:\n%s", ipvs.DefaultMarkTable, nft.DefaultTable, tables)
		}
	})
}

// switchNode is a node namespace with its underlay.
func switchNode(t *testing.T) *netnstest.NS {
	node, client := netnstest.New(t, "node"), netnstest.New(t, "cli")
	netnstest.Link(t, node, "ul0", kDataAddr+"/24", client, "eth0", kClient+"/24")
	return node
}

// programmed applies the kernel test's view with a, and returns it.
func programmed(t *testing.T, a *Agent) *Agent {
	t.Helper()
	if err := a.Apply(context.Background(), kernelDelta(), true); err != nil {
		t.Fatal(err)
	}
	return a
}

// stopped leaves what a stopping shoald leaves of its agent: the kernel
// state, without the resolver's listeners (its sockets close with the
// process).
func stopped(a *Agent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dns.Close()
	a.dns = nil
}

// ipvsServices counts the IPVS services in the node's namespace in the
// IPVS balancer's mark range.
func ipvsServices(t *testing.T, node *netnstest.NS) int {
	t.Helper()
	h, err := mobyipvs.New(node.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	svcs, err := h.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range svcs {
		if s.FWMark >= ipvs.FirstMark && s.FWMark < ipvs.FirstMark+ipvs.MaxMarks {
			n++
		}
	}
	return n
}
