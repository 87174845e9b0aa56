package attach

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/shoal-project/shoal/network"
	"github.com/shoal-project/shoal/network/ipam"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// HostVethPrefix starts the name of the host end of every task veth.
const HostVethPrefix = "shv"

// DefaultIfName is the task's interface name when Spec.IfName is empty.
const DefaultIfName = "eth0"

// HostVethName is the host end's name for the attachment with this id: a
// hash, since task IDs are longer than the 15 bytes a Linux interface name
// may have, and stable, so Detach finds it after a restart.
func HostVethName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return HostVethPrefix + hex.EncodeToString(sum[:6])
}

// Spec is one task interface on one overlay network.
type Spec struct {
	// ID names the attachment (e.g. task ID + "/" + network ID); Detach
	// takes the same ID.
	ID string
	// NetNSPath is the task's network namespace.
	NetNSPath string
	// Bridge is the overlay bridge the host end joins.
	Bridge string
	// Addr is the task's address with the length of the network's subnet.
	Addr netip.Prefix
	// Gateway, when valid, becomes the task's default route. A task on
	// several networks has one default route: set it on one of them.
	Gateway netip.Addr
	// MAC of the task's interface; nil means ipam.MACFromIP(Addr).
	MAC net.HardwareAddr
	MTU int
	// IfName of the task's interface; empty means eth0.
	IfName string
}

// Attacher creates and removes task interfaces on one node.
type Attacher struct {
	host *netlink.Handle
}

// NewAttacher works with bridges in the namespace at hostNetNSPath (empty:
// the caller's), which is where the overlay.Manager of the node works.
func NewAttacher(hostNetNSPath string) (*Attacher, error) {
	h, err := network.NetlinkHandle(hostNetNSPath)
	if err != nil {
		return nil, fmt.Errorf("attach: host namespace: %w", err)
	}
	return &Attacher{host: h}, nil
}

// Close releases the host netlink handle.
func (a *Attacher) Close() { a.host.Close() }

// Attach creates the veth pair of s. An interface left by an earlier Attach
// with the same ID is replaced, so a retry after a crash starts clean. On
// failure nothing is left behind.
func (a *Attacher) Attach(ctx context.Context, s Spec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.check(); err != nil {
		return fmt.Errorf("attach %s: %w", s.ID, err)
	}
	if s.MAC == nil {
		s.MAC = ipam.MACFromIP(s.Addr.Addr())
	}
	if s.IfName == "" {
		s.IfName = DefaultIfName
	}
	hostName := HostVethName(s.ID)
	if err := a.Detach(ctx, s.ID); err != nil {
		return err
	}
	br, err := a.host.LinkByName(s.Bridge)
	if err != nil {
		return fmt.Errorf("attach %s: bridge %s: %w", s.ID, s.Bridge, err)
	}

	taskNS, err := netns.GetFromPath(s.NetNSPath)
	if err != nil {
		return fmt.Errorf("attach %s: open task namespace %s: %w", s.ID, s.NetNSPath, err)
	}
	defer taskNS.Close()
	task, err := netlink.NewHandleAt(taskNS)
	if err != nil {
		return fmt.Errorf("attach %s: netlink in %s: %w", s.ID, s.NetNSPath, err)
	}
	defer task.Close()

	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = s.MTU
	veth := &netlink.Veth{
		LinkAttrs: attrs,
		// Created straight in the task's namespace under its final name:
		// it never appears in the host namespace, where eth0 exists.
		PeerName:         s.IfName,
		PeerNamespace:    netlink.NsFd(taskNS),
		PeerHardwareAddr: s.MAC,
		PeerMTU:          uint32(s.MTU),
	}
	if err := a.host.LinkAdd(veth); err != nil {
		return fmt.Errorf("attach %s: create veth %s/%s: %w", s.ID, hostName, s.IfName, err)
	}
	if err := a.configure(s, br, task); err != nil {
		if derr := a.Detach(context.WithoutCancel(ctx), s.ID); derr != nil {
			err = errors.Join(err, derr)
		}
		return fmt.Errorf("attach %s: %w", s.ID, err)
	}
	return nil
}

func (a *Attacher) configure(s Spec, br netlink.Link, task *netlink.Handle) error {
	host, err := a.host.LinkByName(HostVethName(s.ID))
	if err != nil {
		return fmt.Errorf("find host veth: %w", err)
	}
	if err := a.host.LinkSetMaster(host, br); err != nil {
		return fmt.Errorf("add %s to bridge %s: %w", host.Attrs().Name, s.Bridge, err)
	}
	if err := a.host.LinkSetUp(host); err != nil {
		return fmt.Errorf("set %s up: %w", host.Attrs().Name, err)
	}

	lo, err := task.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("task loopback: %w", err)
	}
	if err := task.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set task loopback up: %w", err)
	}
	eth, err := task.LinkByName(s.IfName)
	if err != nil {
		return fmt.Errorf("task interface %s: %w", s.IfName, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: s.Addr.Addr().AsSlice(), Mask: net.CIDRMask(s.Addr.Bits(), 32)}}
	if err := task.AddrAdd(eth, addr); err != nil {
		return fmt.Errorf("add %s to task %s: %w", s.Addr, s.IfName, err)
	}
	if err := task.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set task %s up: %w", s.IfName, err)
	}
	if s.Gateway.IsValid() {
		route := &netlink.Route{
			LinkIndex: eth.Attrs().Index,
			Gw:        s.Gateway.AsSlice(),
			Dst:       &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
		}
		if err := task.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %s: %w", s.Gateway, err)
		}
	}
	return nil
}

// Detach removes the veth pair of the attachment with this ID; the task's
// end goes with it. Detaching what is not attached is not an error.
func (a *Attacher) Detach(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	name := HostVethName(id)
	l, err := a.host.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("detach %s: find %s: %w", id, name, err)
	}
	if err := a.host.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("detach %s: remove %s: %w", id, name, err)
	}
	return nil
}

func (s Spec) check() error {
	switch {
	case s.ID == "":
		return errors.New("no attachment ID")
	case s.NetNSPath == "":
		return errors.New("no task network namespace")
	case s.Bridge == "":
		return errors.New("no bridge")
	case !s.Addr.IsValid() || !s.Addr.Addr().Is4():
		return fmt.Errorf("address %v: need an IPv4 address with its prefix length", s.Addr)
	case s.Gateway.IsValid() && !s.Addr.Masked().Contains(s.Gateway):
		return fmt.Errorf("gateway %s not in %s", s.Gateway, s.Addr.Masked())
	case s.MAC != nil && len(s.MAC) != 6:
		return fmt.Errorf("MAC %s is not an Ethernet address", s.MAC)
	case s.MTU < 68:
		return fmt.Errorf("MTU %d below the IPv4 minimum of 68", s.MTU)
	}
	return nil
}
