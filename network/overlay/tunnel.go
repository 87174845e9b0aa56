package overlay

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/shoal-project/shoal/network"
)

// The tunnel of encrypted networks: one WireGuard device per node, one
// peer per other node. An encrypted network's VXLAN device takes the
// node's tunnel address as its source and the tunnel device as its
// underlay, so its VXLAN datagrams go to the peers' tunnel addresses over
// WireGuard (IPv6 inside, UDP over the underlay outside); the other
// networks stay on the underlay.
const (
	// TunnelName is the WireGuard device.
	TunnelName = "shw-wg"
	// TunnelPort is WireGuard's UDP port on the underlay.
	TunnelPort = 51820
	// TunnelOverhead is what WireGuard over IPv4 adds to a packet (outer
	// IP 20, UDP 8, WireGuard header 16, authentication tag 16): the
	// tunnel device's MTU is the underlay MTU minus this.
	TunnelOverhead = 60
	// Overhead6 is what VXLAN over IPv6 adds to a frame (outer IP 40, UDP
	// 8, VXLAN 8, inner Ethernet 14): an encrypted network's MTU is the
	// tunnel's minus this.
	Overhead6 = 70

	probeName = "shw-probe"
)

// TunnelPrefix holds every node's tunnel address: a unique local IPv6
// prefix ("shoal" in hex after fd), never routed beyond the tunnel device.
var TunnelPrefix = netip.MustParsePrefix("fd73:686f:616c::/64")

// TunnelAddr is a node's address on the tunnel, the same on every node:
// the prefix and the first 64 bits of the SHA-256 of the node's ID. Every
// node derives every peer's address, so the managers need not allocate
// or send them, and WireGuard's allowed IPs bind each to its key.
func TunnelAddr(nodeID string) netip.Addr {
	sum := sha256.Sum256([]byte(nodeID))
	b := TunnelPrefix.Addr().As16()
	copy(b[8:], sum[:8])
	return netip.AddrFrom16(b)
}

// TunnelPeer is another node on the tunnel.
type TunnelPeer struct {
	// Key is the node's WireGuard public key.
	Key wgtypes.Key
	// Endpoint is the node's data address, where its tunnel listens.
	Endpoint netip.Addr
	// Addr is its tunnel address (TunnelAddr).
	Addr netip.Addr
}

// TunnelState is the desired tunnel: a device with these peers when
// Active (the node has an encrypted network), none otherwise.
type TunnelState struct {
	Active bool
	Peers  []TunnelPeer
}

// tunnel holds the node's WireGuard key: made once, or taken back from a
// device a previous run left, and never written anywhere but the kernel.
type tunnel struct {
	once      sync.Once
	supported bool
	why       error // why not supported
	key       wgtypes.Key
}

// TunnelKey returns the node's WireGuard public key, or an error saying
// why the node has none (its kernel lacks WireGuard). The first call finds
// out: it takes the private key of a tunnel device a previous run left (so
// peers keep their sessions across a restart of the daemon), or makes one.
func (m *Manager) TunnelKey() (wgtypes.Key, error) {
	m.tun.once.Do(m.initTunnel)
	if !m.tun.supported {
		return wgtypes.Key{}, m.tun.why
	}
	return m.tun.key.PublicKey(), nil
}

func (m *Manager) initTunnel() {
	if l, err := m.linkByName(TunnelName); err == nil && l != nil && l.Type() == "wireguard" {
		var dev *wgtypes.Device
		err := m.withWG(func(c *wgctrl.Client) (err error) {
			dev, err = c.Device(TunnelName)
			return err
		})
		if err == nil && dev.PrivateKey != (wgtypes.Key{}) {
			m.tun.supported, m.tun.key = true, dev.PrivateKey
			m.log.Info("WireGuard tunnel: kept the key of the existing device", "device", TunnelName, "public_key", dev.PublicKey.String())
			return
		}
		m.log.Warn("WireGuard tunnel: existing device unreadable; making a new key", "device", TunnelName, "err", err)
	}
	// Probe with a device of another name, so that a device in use is
	// never touched here.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = probeName
	if err := m.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: attrs}); err != nil {
		m.tun.why = fmt.Errorf("the kernel has no WireGuard (creating a wireguard device: %w)", err)
		m.log.Info("no WireGuard: this node cannot join encrypted networks", "err", err)
		return
	}
	if l, err := m.nl.LinkByName(probeName); err == nil {
		m.nl.LinkDel(l)
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		m.tun.why = fmt.Errorf("make a WireGuard key: %w", err)
		return
	}
	m.tun.supported, m.tun.key = true, key
	m.log.Info("WireGuard tunnel: made a key pair", "public_key", key.PublicKey().String())
}

// withWG runs fn with a WireGuard control client whose socket lives in the
// manager's namespace.
func (m *Manager) withWG(fn func(*wgctrl.Client) error) error {
	var c *wgctrl.Client
	if err := network.InNetNS(m.cfg.NetNSPath, func() (err error) {
		c, err = wgctrl.New()
		return err
	}); err != nil {
		return fmt.Errorf("WireGuard control: %w", err)
	}
	defer c.Close()
	return fn(c)
}

// ApplyTunnel makes the tunnel device match s: created with the node's key,
// its tunnel address and exactly s's peers when active, removed when not.
// Peers that stay are updated in place, so their sessions survive.
func (m *Manager) ApplyTunnel(s TunnelState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	link, err := m.linkByName(TunnelName)
	if err != nil {
		return err
	}
	if !s.Active {
		if link == nil {
			return nil
		}
		if err := m.nl.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("remove %s: %w", TunnelName, err)
		}
		m.log.Info("removed the WireGuard tunnel: no encrypted network left", "device", TunnelName)
		return nil
	}
	if _, err := m.TunnelKey(); err != nil {
		return fmt.Errorf("encrypted networks need WireGuard: %w", err)
	}
	if !m.cfg.TunnelAddr.IsValid() || !TunnelPrefix.Contains(m.cfg.TunnelAddr) {
		return fmt.Errorf("tunnel address %v: not in %s", m.cfg.TunnelAddr, TunnelPrefix)
	}
	for _, p := range s.Peers {
		if !p.Endpoint.Is4() || !TunnelPrefix.Contains(p.Addr) || p.Addr == m.cfg.TunnelAddr {
			return fmt.Errorf("tunnel peer %s at %s: need an IPv4 endpoint and another tunnel address in %s", p.Addr, p.Endpoint, TunnelPrefix)
		}
	}
	if link != nil && link.Type() != "wireguard" {
		m.log.Warn("replacing device that is not a WireGuard device", "device", TunnelName, "type", link.Type())
		if err := m.nl.LinkDel(link); err != nil {
			return fmt.Errorf("remove %s: %w", TunnelName, err)
		}
		link = nil
	}
	mtu, err := m.UnderlayMTU()
	if err != nil {
		return err
	}
	mtu -= TunnelOverhead
	if link == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = TunnelName
		attrs.MTU = mtu
		if err := m.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: attrs}); err != nil {
			return fmt.Errorf("create WireGuard device %s: %w", TunnelName, err)
		}
		if link, err = m.nl.LinkByName(TunnelName); err != nil {
			return fmt.Errorf("find new WireGuard device %s: %w", TunnelName, err)
		}
		m.log.Info("created the WireGuard tunnel", "device", TunnelName, "addr", m.cfg.TunnelAddr, "mtu", mtu)
	}
	if link.Attrs().MTU != mtu {
		if err := m.nl.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set MTU of %s to %d: %w", TunnelName, mtu, err)
		}
	}
	if err := m.syncTunnelAddr(link); err != nil {
		return err
	}
	if err := m.withWG(func(c *wgctrl.Client) error { return m.syncTunnelPeers(c, s.Peers) }); err != nil {
		return err
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := m.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", TunnelName, err)
		}
	}
	return nil
}

// syncTunnelAddr makes the node's tunnel address, with the tunnel prefix
// (which routes the prefix into the tunnel), the device's only address.
// No duplicate detection: the address is unique by construction.
func (m *Manager) syncTunnelAddr(link netlink.Link) error {
	want := netip.PrefixFrom(m.cfg.TunnelAddr, TunnelPrefix.Bits())
	cur, err := m.nl.AddrList(link, unix.AF_INET6)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", TunnelName, err)
	}
	found := false
	for _, a := range cur {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(ip, ones) == want {
			found = true
			continue
		}
		if ip.IsLinkLocalUnicast() {
			continue
		}
		if err := m.nl.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove address %s from %s: %w", a.IPNet, TunnelName, err)
		}
	}
	if found {
		return nil
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(want.Bits(), 128)}, Flags: unix.IFA_F_NODAD}
	if err := m.nl.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add address %s to %s: %w", want, TunnelName, err)
	}
	return nil
}

// syncTunnelPeers sets the device's key and port and makes its peers
// exactly want, changing only what differs.
func (m *Manager) syncTunnelPeers(c *wgctrl.Client, want []TunnelPeer) error {
	dev, err := c.Device(TunnelName)
	if err != nil {
		return fmt.Errorf("read WireGuard device %s: %w", TunnelName, err)
	}
	cfg := wgtypes.Config{}
	if dev.PrivateKey != m.tun.key {
		cfg.PrivateKey = &m.tun.key
	}
	if dev.ListenPort != TunnelPort {
		port := TunnelPort
		cfg.ListenPort = &port
	}
	have := make(map[wgtypes.Key]wgtypes.Peer, len(dev.Peers))
	for _, p := range dev.Peers {
		have[p.PublicKey] = p
	}
	wanted := make(map[wgtypes.Key]bool, len(want))
	for _, p := range want {
		wanted[p.Key] = true
		endpoint := &net.UDPAddr{IP: p.Endpoint.AsSlice(), Port: TunnelPort}
		allowed := []net.IPNet{{IP: p.Addr.AsSlice(), Mask: net.CIDRMask(128, 128)}}
		if h, ok := have[p.Key]; ok && sameEndpoint(h.Endpoint, endpoint) && sameNets(h.AllowedIPs, allowed) {
			continue
		}
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{
			PublicKey: p.Key, Endpoint: endpoint,
			ReplaceAllowedIPs: true, AllowedIPs: allowed,
		})
	}
	for k := range have {
		if !wanted[k] {
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		}
	}
	if cfg.PrivateKey == nil && cfg.ListenPort == nil && len(cfg.Peers) == 0 {
		return nil
	}
	if err := c.ConfigureDevice(TunnelName, cfg); err != nil {
		return fmt.Errorf("configure WireGuard device %s (%d peer changes): %w", TunnelName, len(cfg.Peers), err)
	}
	m.log.Debug("configured the WireGuard tunnel", "peer_changes", len(cfg.Peers), "peers", len(want))
	return nil
}

func sameEndpoint(a, b *net.UDPAddr) bool {
	return a != nil && b != nil && a.IP.Equal(b.IP) && a.Port == b.Port
}

func sameNets(a, b []net.IPNet) bool {
	return slices.EqualFunc(a, b, func(x, y net.IPNet) bool { return x.String() == y.String() })
}

// tunnelIndex returns the tunnel device's index, 0 if there is none.
func (m *Manager) tunnelIndex() (int, error) {
	l, err := m.linkByName(TunnelName)
	if err != nil || l == nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}
