package netagent

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	shoalnet "github.com/shoal-project/shoal/network"
	"github.com/shoal-project/shoal/network/attach"
	"github.com/shoal-project/shoal/network/lb/ipvs"
	"github.com/shoal-project/shoal/network/lb/nft"
	"github.com/shoal-project/shoal/network/overlay"
)

// shoalTables are the nftables tables shoal makes in a node's namespace,
// whichever load balancer it ran with.
var shoalTables = []string{nft.DefaultTable, ipvs.DefaultMarkTable, attach.NATTable, GuardTable}

// Teardown removes everything shoal made in the node's namespace, for a
// node that leaves the cluster, then closes the agent: what Close removes
// (the load balancer, overlay bridges and VXLAN devices, the guard table,
// masquerade rules, VIPs, DNS listeners), the host ends of task veths still there,
// the state of the load balancer backend this agent does not use (the
// node may have run with the other one before), and the state directory.
// Sysctls stay as they are. It works from the kernel, not from the view:
// an agent that never applied anything removes as much.
func (a *Agent) Teardown() error {
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return errors.New("network agent is closed")
	}
	var errs []error
	if err := a.removeTaskVeths(); err != nil {
		errs = append(errs, err)
	}
	if err := a.removeOtherBackend(); err != nil {
		errs = append(errs, err)
	}
	if err := a.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := shoalnet.InNetNS(a.cfg.NetNSPath, removeShoalTables); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(a.cfg.StateDir); err != nil {
		errs = append(errs, fmt.Errorf("remove network state: %w", err))
	}
	return errors.Join(errs...)
}

// ipvsLoaded is where the kernel lists IPVS connections once the ip_vs
// module is loaded, in every namespace; without it there are no IPVS
// services to remove.
const ipvsLoaded = "/proc/net/ip_vs"

// removeOtherBackend removes what the load balancer backend this agent
// does not use left in the namespace: the nft backend's table, or the
// IPVS services and the marker's table. A node that ran with the other
// backend before (its --lb-backend changed) would otherwise keep those
// rules beside the ones in use: the nft backend's DNAT in prerouting
// takes a published port's traffic before IPVS sees it, and sends it to
// the backends of the earlier run. It runs before the first Apply, and at
// Teardown.
func (a *Agent) removeOtherBackend() error {
	if a.ipvs {
		if err := shoalnet.InNetNS(a.cfg.NetNSPath, func() error { return removeTables(nft.DefaultTable) }); err != nil {
			return fmt.Errorf("remove the nftables load balancer of an earlier run: %w", err)
		}
		return nil
	}
	if err := shoalnet.InNetNS(a.cfg.NetNSPath, func() error { return removeTables(ipvs.DefaultMarkTable) }); err != nil {
		return fmt.Errorf("remove the IPVS marks of an earlier run: %w", err)
	}
	if _, err := os.Stat(ipvsLoaded); err != nil || !ipvs.Available() {
		return nil
	}
	// Closing a balancer removes every IPVS service in its range.
	b, err := ipvs.NewKernel(a.cfg.NetNSPath)
	if err == nil {
		err = b.Close()
	}
	if err != nil {
		return fmt.Errorf("remove the IPVS services of an earlier run: %w", err)
	}
	return nil
}

// removeTaskVeths deletes the host ends of task veths (a veth goes with
// its container's namespace, so these are only the ones left behind).
func (a *Agent) removeTaskVeths() error {
	links, err := a.host.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, attach.HostVethPrefix) {
			continue
		}
		if err := a.host.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("remove task interface %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists what shoal made in the namespace at netnsPath ("" for
// the caller's): overlay bridges and VXLAN devices, task veths, VIPs, and
// shoal's nftables tables. After Teardown it is empty.
func Leftovers(netnsPath string) ([]string, error) {
	h, err := shoalnet.NetlinkHandle(netnsPath)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var found []string
	for _, l := range links {
		name := l.Attrs().Name
		for _, p := range []string{overlay.BridgePrefix, overlay.VXLANPrefix, attach.HostVethPrefix, overlay.TunnelName} {
			if strings.HasPrefix(name, p) {
				found = append(found, "link "+name)
			}
		}
		if name == "lo" {
			addrs, err := h.AddrList(l, unix.AF_INET)
			if err != nil {
				return nil, fmt.Errorf("list loopback addresses: %w", err)
			}
			for _, a := range addrs {
				if a.Label == vipLabel {
					found = append(found, "VIP "+a.IPNet.String())
				}
			}
		}
	}
	err = shoalnet.InNetNS(netnsPath, func() error {
		_, tables, err := listShoalTables()
		for _, t := range tables {
			found = append(found, "nft table "+t.Name)
		}
		return err
	})
	return found, err
}

// listShoalTables returns shoal's nftables tables in the namespace the
// calling thread is in, and the connection that listed them.
func listShoalTables() (*nftables.Conn, []*nftables.Table, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, nil, fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return nil, nil, fmt.Errorf("list nftables tables: %w", err)
	}
	return c, slices.DeleteFunc(tables, func(t *nftables.Table) bool { return !slices.Contains(shoalTables, t.Name) }), nil
}

// removeShoalTables deletes shoal's nftables tables in the namespace the
// calling thread is in.
func removeShoalTables() error { return removeTables(shoalTables...) }

// removeTables deletes those of shoal's nftables tables named that exist
// in the namespace the calling thread is in.
func removeTables(names ...string) error {
	c, tables, err := listShoalTables()
	if err != nil {
		return err
	}
	tables = slices.DeleteFunc(tables, func(t *nftables.Table) bool { return !slices.Contains(names, t.Name) })
	if len(tables) == 0 {
		return nil
	}
	for _, t := range tables {
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nftables tables: %w", err)
	}
	return nil
}
