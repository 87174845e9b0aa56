package overlay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/shoal-project/shoal/network"
	"github.com/shoal-project/shoal/network/ipam"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// VXLANPort is the IANA VXLAN port, the one Swarm and Linux use.
	VXLANPort = 4789
	// Overhead is what VXLAN over IPv4 adds to a frame (outer IP 20, UDP 8,
	// VXLAN 8, inner Ethernet 14); task MTU is the underlay MTU minus this.
	Overhead = 50

	// BridgePrefix and VXLANPrefix name the devices a Manager owns; any
	// device with these prefixes not in the desired state is removed.
	BridgePrefix = "shb-"
	VXLANPrefix  = "shx-"

	minVNI = 1
	maxVNI = 1<<24 - 1
)

// BridgeName is the name of the bridge of the network with this VNI, the
// device tasks' veths are attached to.
func BridgeName(vni uint32) string { return BridgePrefix + strconv.FormatUint(uint64(vni), 10) }

// VXLANName is the name of the VXLAN device of the network with this VNI.
func VXLANName(vni uint32) string { return VXLANPrefix + strconv.FormatUint(uint64(vni), 10) }

// Network is an overlay network as a node sees it.
type Network struct {
	ID      string
	VNI     uint32
	Subnet  netip.Prefix
	Gateway netip.Addr
	// MTU of the bridge and of tasks' interfaces; 0 means the underlay MTU
	// minus Overhead (minus TunnelOverhead and Overhead6 when encrypted).
	MTU int
	// Encrypted networks send their VXLAN through the WireGuard tunnel
	// (ApplyTunnel): their VTEPs are tunnel addresses (TunnelAddr), not
	// data addresses.
	Encrypted bool
}

// Peer is another node that has tasks on the network: broadcast and
// unknown-unicast frames are sent to its VTEP (its data address, or its
// tunnel address on an encrypted network).
type Peer struct {
	VTEP netip.Addr
}

// Endpoint is a task on another node.
type Endpoint struct {
	Addr netip.Addr
	MAC  net.HardwareAddr
	VTEP netip.Addr
}

// NetworkState is the desired state of one network on this node.
type NetworkState struct {
	Network
	// NodeAddr, when valid, is this node's own address on the network, put
	// on the bridge as its primary address so that traffic the node sends
	// into the overlay (ingress DNAT then masquerade) has a source that
	// routes back to this node. The gateway is the same on every node and
	// so cannot serve. For networks without ingress it stays unset.
	NodeAddr netip.Addr
	Peers    []Peer
	// Endpoints are remote tasks only; local tasks are reached through the
	// bridge.
	Endpoints []Endpoint
}

// Config says where a Manager works.
type Config struct {
	// UnderlayAddr is this node's VTEP: the source of VXLAN packets, the
	// address peers list for it.
	UnderlayAddr netip.Addr
	// UnderlayLink names the interface holding UnderlayAddr; empty means
	// the one that has it.
	UnderlayLink string
	// TunnelAddr is this node's address on the WireGuard tunnel
	// (TunnelAddr of its node ID), the VTEP of its encrypted networks.
	TunnelAddr netip.Addr
	// NetNSPath is the network namespace to work in (a /run/netns or
	// /proc/<pid>/ns/net path); empty means the caller's.
	NetNSPath string
	Logger    *slog.Logger
}

// Manager reconciles the overlay devices of one node.
type Manager struct {
	mu       sync.Mutex
	cfg      Config
	log      *slog.Logger
	nl       *netlink.Handle
	underlay int // link index
	tun      tunnel
}

// NewManager opens a netlink handle in the configured namespace and finds
// the underlay interface.
func NewManager(cfg Config) (*Manager, error) {
	if !cfg.UnderlayAddr.Is4() {
		return nil, fmt.Errorf("overlay: underlay address %v: need an IPv4 address", cfg.UnderlayAddr)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	h, err := network.NetlinkHandle(cfg.NetNSPath)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: log.With("component", "overlay"), nl: h}
	if m.underlay, err = m.findUnderlay(); err != nil {
		h.Close()
		return nil, err
	}
	return m, nil
}

// Close releases the netlink handle. Devices stay: they carry traffic of
// running tasks across a restart of the daemon.
func (m *Manager) Close() error {
	m.nl.Close()
	return nil
}

func (m *Manager) findUnderlay() (int, error) {
	if m.cfg.UnderlayLink != "" {
		l, err := m.nl.LinkByName(m.cfg.UnderlayLink)
		if err != nil {
			return 0, fmt.Errorf("overlay: underlay interface %s: %w", m.cfg.UnderlayLink, err)
		}
		return l.Attrs().Index, nil
	}
	addrs, err := m.nl.AddrList(nil, unix.AF_INET)
	if err != nil {
		return 0, fmt.Errorf("overlay: list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == m.cfg.UnderlayAddr {
			return a.LinkIndex, nil
		}
	}
	return 0, fmt.Errorf("overlay: no interface has the underlay address %s", m.cfg.UnderlayAddr)
}

// UnderlayMTU returns the MTU of the underlay interface now.
func (m *Manager) UnderlayMTU() (int, error) {
	l, err := m.nl.LinkByIndex(m.underlay)
	if err != nil {
		return 0, fmt.Errorf("overlay: underlay interface %d: %w", m.underlay, err)
	}
	return l.Attrs().MTU, nil
}

// MTU returns the MTU of n's bridge and of its tasks' interfaces.
func (m *Manager) MTU(n Network) (int, error) {
	if n.MTU > 0 {
		return n.MTU, nil
	}
	u, err := m.UnderlayMTU()
	if err != nil {
		return 0, err
	}
	if n.Encrypted {
		return u - TunnelOverhead - Overhead6, nil
	}
	return u - Overhead, nil
}

// Apply makes the node's overlay devices match desired: it creates and fixes
// what differs and removes the devices of networks not listed. A network
// that cannot be applied does not stop the others; the error names each
// failure, and the next Apply tries again from what the kernel holds.
func (m *Manager) Apply(ctx context.Context, desired []NetworkState) error {
	m.mu.Lock()
	defer m.mu.Unlock()

	var errs []error
	keep := make(map[string]bool)
	seen := make(map[uint32]string)
	for _, ns := range desired {
		if other, dup := seen[ns.VNI]; dup {
			errs = append(errs, fmt.Errorf("network %s: VNI %d already used by network %s", ns.ID, ns.VNI, other))
			continue
		}
		seen[ns.VNI] = ns.ID
		// Devices of a network that fails, even validation, are kept:
		// removing them would cut running tasks off for a bad update.
		keep[BridgeName(ns.VNI)] = true
		keep[VXLANName(ns.VNI)] = true
	}
	for _, ns := range desired {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if seen[ns.VNI] != ns.ID {
			continue
		}
		if err := m.applyNetwork(ns); err != nil {
			errs = append(errs, fmt.Errorf("network %s (VNI %d): %w", ns.ID, ns.VNI, err))
		}
	}
	if err := m.removeUnwanted(keep); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func validate(ns NetworkState) error {
	if ns.VNI < minVNI || ns.VNI > maxVNI {
		return fmt.Errorf("VNI %d out of range %d-%d", ns.VNI, minVNI, maxVNI)
	}
	if !ns.Subnet.IsValid() || !ns.Subnet.Addr().Is4() || ns.Subnet.Masked() != ns.Subnet {
		return fmt.Errorf("subnet %v: need an IPv4 network prefix", ns.Subnet)
	}
	if !ns.Subnet.Contains(ns.Gateway) {
		return fmt.Errorf("gateway %v not in subnet %s", ns.Gateway, ns.Subnet)
	}
	if ns.NodeAddr.IsValid() && (!ns.Subnet.Contains(ns.NodeAddr) || ns.NodeAddr == ns.Gateway) {
		return fmt.Errorf("node address %s: not a host address of %s other than the gateway", ns.NodeAddr, ns.Subnet)
	}
	vtepOK, want := func(a netip.Addr) bool { return a.Is4() }, "an IPv4 address"
	if ns.Encrypted {
		vtepOK, want = TunnelPrefix.Contains, "a tunnel address in "+TunnelPrefix.String()
	}
	for _, p := range ns.Peers {
		if !vtepOK(p.VTEP) {
			return fmt.Errorf("peer VTEP %v: need %s", p.VTEP, want)
		}
	}
	for _, e := range ns.Endpoints {
		if !ns.Subnet.Contains(e.Addr) {
			return fmt.Errorf("endpoint %v not in subnet %s", e.Addr, ns.Subnet)
		}
		if len(e.MAC) != 6 {
			return fmt.Errorf("endpoint %s: MAC %q is not an Ethernet address", e.Addr, e.MAC)
		}
		if !vtepOK(e.VTEP) {
			return fmt.Errorf("endpoint %s: VTEP %v: need %s", e.Addr, e.VTEP, want)
		}
	}
	return nil
}

func (m *Manager) applyNetwork(ns NetworkState) error {
	if err := validate(ns); err != nil {
		return err
	}
	mtu, err := m.MTU(ns.Network)
	if err != nil {
		return err
	}
	br, err := m.ensureBridge(ns, mtu)
	if err != nil {
		return err
	}
	src, dev := m.cfg.UnderlayAddr, m.underlay
	if ns.Encrypted {
		if dev, err = m.tunnelIndex(); err != nil {
			return err
		}
		if dev == 0 {
			return fmt.Errorf("encrypted: no tunnel device %s (WireGuard)", TunnelName)
		}
		if src = m.cfg.TunnelAddr; !TunnelPrefix.Contains(src) {
			return fmt.Errorf("encrypted: this node's tunnel address %v is not in %s", src, TunnelPrefix)
		}
	}
	vx, err := m.ensureVXLAN(ns, mtu, br, src, dev)
	if err != nil {
		return err
	}
	return errors.Join(m.syncFDB(ns, vx, src), m.syncNeighbours(ns, vx))
}

// bridgeMAC is fixed per node and network. A bridge otherwise takes the
// lowest MAC of its ports, so it would change as tasks come and go and
// leave tasks with a stale ARP entry for their gateway. With a node address
// it is the one derived from that address, so other nodes can list the node
// as an ordinary endpoint.
func (m *Manager) bridgeMAC(ns NetworkState) net.HardwareAddr {
	if ns.NodeAddr.IsValid() {
		return ipam.MACFromIP(ns.NodeAddr)
	}
	vni := ns.VNI
	var buf [8]byte
	a := m.cfg.UnderlayAddr.As4()
	copy(buf[:4], a[:])
	binary.BigEndian.PutUint32(buf[4:], vni)
	sum := sha256.Sum256(buf[:])
	mac := net.HardwareAddr(append([]byte{0x02}, sum[:5]...)) // locally administered, unicast
	return mac
}

// vxlanMAC is the VXLAN device's MAC, fixed per node and network (see
// ensureVXLAN).
func (m *Manager) vxlanMAC(vni uint32) net.HardwareAddr {
	var buf [9]byte
	a := m.cfg.UnderlayAddr.As4()
	copy(buf[:4], a[:])
	binary.BigEndian.PutUint32(buf[4:8], vni)
	buf[8] = 'x'
	sum := sha256.Sum256(buf[:])
	return net.HardwareAddr(append([]byte{0x02}, sum[:5]...)) // locally administered, unicast
}

func (m *Manager) ensureBridge(ns NetworkState, mtu int) (netlink.Link, error) {
	name := BridgeName(ns.VNI)
	link, err := m.linkByName(name)
	if err != nil {
		return nil, err
	}
	if link != nil {
		if _, ok := link.(*netlink.Bridge); !ok {
			m.log.Warn("replacing device that is not a bridge", "device", name, "type", link.Type())
			if err := m.nl.LinkDel(link); err != nil {
				return nil, fmt.Errorf("remove %s: %w", name, err)
			}
			link = nil
		}
	}
	if link == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.MTU = mtu
		attrs.HardwareAddr = m.bridgeMAC(ns)
		if err := m.nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		m.log.Info("created bridge", "device", name, "network", ns.ID, "mtu", mtu)
		if link, err = m.nl.LinkByName(name); err != nil {
			return nil, fmt.Errorf("find new bridge %s: %w", name, err)
		}
	}
	if link.Attrs().MTU != mtu {
		if err := m.nl.LinkSetMTU(link, mtu); err != nil {
			return nil, fmt.Errorf("set MTU of %s to %d: %w", name, mtu, err)
		}
	}
	if mac := m.bridgeMAC(ns); !bytes.Equal(link.Attrs().HardwareAddr, mac) {
		if err := m.nl.LinkSetHardwareAddr(link, mac); err != nil {
			return nil, fmt.Errorf("set MAC of %s to %s: %w", name, mac, err)
		}
	}
	if err := m.syncBridgeAddrs(ns, link); err != nil {
		return nil, err
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := m.nl.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("set %s up: %w", name, err)
		}
	}
	return link, nil
}

// syncBridgeAddrs puts the node address (primary, when set) and the gateway
// on the bridge. The kernel makes the first address of a subnet primary, and
// masquerade picks the primary, so a wrong order is fixed by starting over.
func (m *Manager) syncBridgeAddrs(ns NetworkState, link netlink.Link) error {
	var want []netip.Addr
	if ns.NodeAddr.IsValid() {
		want = append(want, ns.NodeAddr)
	}
	want = append(want, ns.Gateway)

	cur, err := m.nl.AddrList(link, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	have := make(map[netip.Addr]netlink.Addr)
	var primary netip.Addr
	for _, a := range cur {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		if ones != ns.Subnet.Bits() {
			ip = netip.Addr{} // wrong prefix length: removed below
		}
		have[ip] = a
		if a.Flags&unix.IFA_F_SECONDARY == 0 && ones == ns.Subnet.Bits() {
			primary = ip
		}
	}
	restart := ns.NodeAddr.IsValid() && primary.IsValid() && primary != ns.NodeAddr
	for ip, a := range have {
		if restart || !slices.Contains(want, ip) {
			if err := m.nl.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("remove address %s from %s: %w", a.IPNet, link.Attrs().Name, err)
			}
			delete(have, ip)
		}
	}
	if restart {
		clear(have) // deleting a primary takes its secondaries with it
	}
	for _, ip := range want {
		if _, ok := have[ip]; ok {
			continue
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ns.Subnet.Bits(), 32)}}
		if err := m.nl.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add address %s to %s: %w", a.IPNet, link.Attrs().Name, err)
		}
	}
	return nil
}

// ensureVXLAN makes the network's VXLAN device, sending from src over the
// device with index dev: the underlay, or the tunnel of encrypted networks.
func (m *Manager) ensureVXLAN(ns NetworkState, mtu int, br netlink.Link, srcAddr netip.Addr, dev int) (netlink.Link, error) {
	name := VXLANName(ns.VNI)
	link, err := m.linkByName(name)
	if err != nil {
		return nil, err
	}
	src := srcAddr.AsSlice()
	if link != nil {
		vx, ok := link.(*netlink.Vxlan)
		if !ok || vx.VxlanId != int(ns.VNI) || !vx.SrcAddr.Equal(src) || vx.Port != VXLANPort ||
			vx.Learning || !vx.Proxy || vx.VtepDevIndex != dev {
			// None of these can be changed on a live device.
			m.log.Info("replacing VXLAN device with other settings", "device", name, "network", ns.ID)
			if err := m.nl.LinkDel(link); err != nil {
				return nil, fmt.Errorf("remove %s: %w", name, err)
			}
			link = nil
		}
	}
	if link == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.MTU = mtu
		attrs.MasterIndex = br.Attrs().Index
		// A MAC of ours, not the kernel's random one: udev's persistent
		// MAC policy (systemd's default) replaces a random MAC a moment
		// after the device appears, and a MAC change flushes the device's
		// neighbour table, permanent entries included, which took the
		// remote endpoints' ARP entries written meanwhile with it.
		attrs.HardwareAddr = m.vxlanMAC(ns.VNI)
		vx := &netlink.Vxlan{
			LinkAttrs:    attrs,
			VxlanId:      int(ns.VNI),
			VtepDevIndex: dev,
			SrcAddr:      src,
			Port:         VXLANPort,
			Learning:     false, // the managers' endpoint table is the only truth
			Proxy:        true,  // answer ARP from the neighbour table, never flood it
		}
		if err := m.nl.LinkAdd(vx); err != nil {
			return nil, fmt.Errorf("create VXLAN device %s: %w", name, err)
		}
		m.log.Info("created VXLAN device", "device", name, "network", ns.ID, "vni", ns.VNI, "mtu", mtu)
		if link, err = m.nl.LinkByName(name); err != nil {
			return nil, fmt.Errorf("find new VXLAN device %s: %w", name, err)
		}
	}
	if link.Attrs().MTU != mtu {
		if err := m.nl.LinkSetMTU(link, mtu); err != nil {
			return nil, fmt.Errorf("set MTU of %s to %d: %w", name, mtu, err)
		}
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := m.nl.LinkSetMasterByIndex(link, br.Attrs().Index); err != nil {
			return nil, fmt.Errorf("attach %s to %s: %w", name, br.Attrs().Name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := m.nl.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("set %s up: %w", name, err)
		}
	}
	return link, nil
}

type fdbKey struct {
	mac  string
	vtep netip.Addr
}

var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// syncFDB makes the VXLAN device's forwarding entries exactly: each remote
// endpoint's MAC to its VTEP, and the all-zero MAC (broadcast, multicast,
// unknown unicast) to every peer.
func (m *Manager) syncFDB(ns NetworkState, vx netlink.Link, self netip.Addr) error {
	want := make(map[fdbKey]net.HardwareAddr)
	for _, p := range ns.Peers {
		if p.VTEP != self {
			want[fdbKey{zeroMAC.String(), p.VTEP}] = zeroMAC
		}
	}
	for _, e := range ns.Endpoints {
		want[fdbKey{e.MAC.String(), e.VTEP}] = e.MAC
	}
	cur, err := m.nl.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("list FDB of %s: %w", vx.Attrs().Name, err)
	}
	var errs []error
	for _, n := range cur {
		// Entries of the bridge (NTF_MASTER) and without a remote are not ours.
		if n.Flags&netlink.NTF_SELF == 0 || n.IP == nil {
			continue
		}
		vtep, _ := netip.AddrFromSlice(n.IP)
		k := fdbKey{n.HardwareAddr.String(), vtep.Unmap()}
		if _, ok := want[k]; ok && n.State&netlink.NUD_PERMANENT != 0 {
			delete(want, k)
			continue
		}
		if err := m.nl.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove FDB entry %s dst %s: %w", n.HardwareAddr, n.IP, err))
			continue
		}
		m.log.Debug("removed FDB entry", "device", vx.Attrs().Name, "mac", n.HardwareAddr, "vtep", n.IP)
	}
	for k, mac := range want {
		n := &netlink.Neigh{
			LinkIndex:    vx.Attrs().Index,
			Family:       unix.AF_BRIDGE,
			Flags:        netlink.NTF_SELF,
			State:        netlink.NUD_PERMANENT,
			IP:           k.vtep.AsSlice(),
			HardwareAddr: mac,
		}
		// Append, not add: the all-zero MAC has one entry per peer.
		if err := m.nl.NeighAppend(n); err != nil {
			errs = append(errs, fmt.Errorf("add FDB entry %s dst %s: %w", mac, k.vtep, err))
			continue
		}
		m.log.Debug("added FDB entry", "device", vx.Attrs().Name, "mac", mac, "vtep", k.vtep)
	}
	return errors.Join(errs...)
}

// syncNeighbours makes the VXLAN device's permanent ARP entries exactly the
// remote endpoints, which the proxy flag answers ARP requests from.
func (m *Manager) syncNeighbours(ns NetworkState, vx netlink.Link) error {
	want := make(map[netip.Addr]net.HardwareAddr)
	for _, e := range ns.Endpoints {
		want[e.Addr] = e.MAC
	}
	cur, err := m.nl.NeighList(vx.Attrs().Index, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", vx.Attrs().Name, err)
	}
	var errs []error
	for _, n := range cur {
		ip, _ := netip.AddrFromSlice(n.IP.To4())
		if mac, ok := want[ip]; ok && n.State&netlink.NUD_PERMANENT != 0 && bytes.Equal(mac, n.HardwareAddr) {
			delete(want, ip)
			continue
		}
		if _, ok := want[ip]; ok {
			continue // replaced below
		}
		if err := m.nl.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove neighbour %s: %w", ip, err))
		}
	}
	for ip, mac := range want {
		n := &netlink.Neigh{
			LinkIndex:    vx.Attrs().Index,
			Family:       unix.AF_INET,
			State:        netlink.NUD_PERMANENT,
			IP:           ip.AsSlice(),
			HardwareAddr: mac,
		}
		if err := m.nl.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("set neighbour %s lladdr %s: %w", ip, mac, err))
		}
	}
	return errors.Join(errs...)
}

// removeUnwanted deletes this package's devices that keep does not name,
// VXLAN devices first so no frame is sent into a bridge being removed.
func (m *Manager) removeUnwanted(keep map[string]bool) error {
	links, err := m.nl.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	slices.SortFunc(links, func(a, b netlink.Link) int {
		return strings.Compare(b.Attrs().Name, a.Attrs().Name) // shx- before shb-
	})
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if keep[name] || !(strings.HasPrefix(name, BridgePrefix) || strings.HasPrefix(name, VXLANPrefix)) {
			continue
		}
		if err := m.nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("remove %s: %w", name, err))
			continue
		}
		m.log.Info("removed device of a network no longer wanted", "device", name)
	}
	return errors.Join(errs...)
}

func (m *Manager) linkByName(name string) (netlink.Link, error) {
	l, err := m.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	return l, nil
}
