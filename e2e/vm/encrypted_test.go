package vm

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/internal/servicecheck"
	"github.com/shoal-project/shoal/network/overlay"
)

// The encrypted network test's network and services.
const (
	secureNetwork = "secure"
	secureSubnet  = "10.21.0.0/24"
	secureDB      = "securedb"
	secureFront   = "securefront"
	// probeTable counts, in each VM, what leaves on the private network:
	// VXLAN of the encrypted network's VNI (none may) and WireGuard.
	probeTable = "shoal-test-probe"
)

// TestEncryptedNetwork: on an encrypted network (`network create --opt
// encrypted`) spread over the three VMs, whose kernel has WireGuard, a
// task finds another service by name and reaches each of its tasks, on
// every VM, through the VIP; meanwhile no VXLAN datagram of the network's
// VNI leaves any VM on the private network, and WireGuard's do. Every
// node reports a WireGuard key; the tunnel goes away with the network.
func TestEncryptedNetwork(t *testing.T) {
	c := vmCluster(t)
	ctx := testContext(t)
	image, err := c.EchoImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := c.NodeList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if k := n.GetDescription().GetWireguardKey(); len(k) != 32 {
			t.Errorf("node %s reports a WireGuard key of %d bytes; the VMs' kernel has WireGuard", n.GetDescription().GetHostname(), len(k))
		}
	}

	c.removeEncrypted(ctx)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(rootCtx, 2*time.Minute)
		defer cancel()
		c.removeEncrypted(ctx)
	})
	c.MustShoalctl(t, "network", "create", "--opt", "encrypted", "--subnet", secureSubnet, secureNetwork)
	vni := c.networkVNI(t, secureNetwork)
	for _, n := range c.Nodes {
		node := n.Name
		c.MustRun(t, node, probeRules(vni))
	}
	c.MustShoalctl(t, "service", "create", "--detach", "--name", secureDB, "--replicas", "3",
		"--replicas-max-per-node", "1", "--network", secureNetwork, image)
	c.MustShoalctl(t, "service", "create", "--detach", "--name", secureFront, "--network", secureNetwork, image)

	db := c.converged(t, secureDB, servicecheck.Want{Replicas: 3})
	front := c.converged(t, secureFront, servicecheck.Want{Replicas: 1})
	if perNode := c.perNode(t, db); len(perNode) != 3 {
		t.Fatalf("%s's tasks on %v; want one on each VM", secureDB, perNode)
	}
	svc, err := c.Service(ctx, secureDB)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range front {
		servicecheck.Discovery(t, c.inTask(t, task), svc, db, convergeTimeout)
	}

	sentWG := 0
	for _, n := range c.Nodes {
		node := n.Name
		vx, wg := c.probeCounters(t, node)
		t.Logf("%s sent %d VXLAN datagrams of VNI %d and %d WireGuard datagrams on the private network", node, vx, vni, wg)
		if vx != 0 {
			t.Errorf("%s sent %d datagrams of the encrypted network's VXLAN (VNI %d) in the clear", node, vx, vni)
		}
		sentWG += wg
		if out, err := c.Run(ctx, node, "ip -d link show "+overlay.TunnelName); err != nil || !strings.Contains(out, "wireguard") {
			t.Errorf("%s: no WireGuard device %s: %v %s", node, overlay.TunnelName, err, out)
		}
	}
	if sentWG == 0 {
		t.Error("no VM sent a WireGuard datagram while tasks on different VMs talked over the encrypted network")
	}

	// Without an encrypted network, no node keeps the tunnel.
	c.removeEncrypted(ctx)
	for _, n := range c.Nodes {
		node := n.Name
		eventually(t, convergeTimeout, node+" removes "+overlay.TunnelName, func(ctx context.Context) (bool, string) {
			out, err := c.Run(ctx, node, "ip -o link show")
			return err == nil && !strings.Contains(out, overlay.TunnelName), out
		})
	}
}

// probeRules is a shell command that (re)makes the probe table on a VM:
// counters of the VXLAN datagrams of VNI vni and of the WireGuard
// datagrams that leave on the private network (eth1). The VXLAN header's
// VNI is 24 bits at bit 96 of the UDP header and payload.
func probeRules(vni uint32) string {
	return fmt.Sprintf(`sudo nft -f - <<'EOF'
table inet %[1]s
delete table inet %[1]s
table inet %[1]s {
	chain out {
		type filter hook postrouting priority 0; policy accept;
		oifname "eth1" udp dport %[2]d @th,96,24 %[3]d counter
		oifname "eth1" udp dport %[4]d counter
	}
}
EOF`, probeTable, overlay.VXLANPort, vni, overlay.TunnelPort)
}

// probeCounters reads a VM's probe counters: the encrypted network's
// VXLAN datagrams, and WireGuard's.
func (c *Cluster) probeCounters(t testing.TB, node string) (vxlan, wg int) {
	t.Helper()
	out := c.MustRun(t, node, "sudo nft list chain inet "+probeTable+" out")
	for _, line := range strings.Split(out, "\n") {
		_, after, ok := strings.Cut(line, "counter packets ")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(strings.Fields(after)[0])
		if err != nil {
			t.Fatalf("%s: probe counter %q: %v", node, line, err)
		}
		switch {
		case strings.Contains(line, fmt.Sprintf("dport %d", overlay.VXLANPort)):
			vxlan = n
		case strings.Contains(line, fmt.Sprintf("dport %d", overlay.TunnelPort)):
			wg = n
		}
	}
	return vxlan, wg
}

// networkVNI is a network's VXLAN id, from `network inspect`.
func (c *Cluster) networkVNI(t testing.TB, name string) uint32 {
	t.Helper()
	out := c.MustShoalctl(t, "network", "inspect", "--format", "{{.Vni}}", name)
	vni, err := strconv.ParseUint(strings.TrimSpace(out), 10, 32)
	if err != nil || vni == 0 {
		t.Fatalf("network inspect %s: VNI %q: %v", name, out, err)
	}
	return uint32(vni)
}

// removeEncrypted removes the test's services, network and probe tables,
// where they exist, and waits until the network is gone.
func (c *Cluster) removeEncrypted(ctx context.Context) {
	for _, svc := range []string{secureDB, secureFront} {
		c.Shoalctl(ctx, "service", "rm", svc) // one that does not exist fails
	}
	for _, n := range c.Nodes {
		node := n.Name
		c.Run(ctx, node, "sudo nft delete table inet "+probeTable+" 2>/dev/null; true")
	}
	for {
		out, err := c.Shoalctl(ctx, "network", "rm", secureNetwork)
		if err == nil || strings.Contains(err.Error(), "not found") {
			return
		}
		select {
		case <-ctx.Done():
			logf("network rm %s: %v: %s", secureNetwork, err, out)
			return
		case <-time.After(time.Second):
		}
	}
}
