package ipvs

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/network"
)

// ErrNoIPVS is returned by NewKernel on a kernel without IPVS.
var ErrNoIPVS = errors.New("the kernel has no IPVS (load the ip_vs module, or use the nftables load balancer)")

// NewKernel returns a Balancer on the kernel's IPVS with an NftMarker,
// inside the network namespace at netnsPath ("" for the caller's). It
// refuses with ErrNoIPVS where Available says there is no IPVS, because
// there moby/ipvs would report success and program nothing. It sets the
// namespace's IPVS up as the balancer needs (see sysctls and timeouts).
// Close releases everything it opened.
func NewKernel(netnsPath string, opts ...MarkerOption) (*Balancer, error) {
	if !Available() {
		return nil, ErrNoIPVS
	}
	ns := netns.None()
	if netnsPath != "" {
		var err error
		if ns, err = netns.GetFromPath(netnsPath); err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", netnsPath, err)
		}
		// The caller's options come after, so it may still name a table.
		opts = append([]MarkerOption{WithMarkNetNS(ns)}, opts...)
	}
	h, err := ipvs.New(netnsPath)
	if err != nil {
		closeNS(ns)
		return nil, fmt.Errorf("open IPVS netlink handle: %w", err)
	}
	if err := configure(netnsPath, h); err != nil {
		h.Close()
		closeNS(ns)
		return nil, err
	}
	var ct *netlink.Handle
	if ns.IsOpen() {
		ct, err = netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	} else {
		ct, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
	}
	if err != nil {
		h.Close()
		closeNS(ns)
		return nil, fmt.Errorf("open conntrack netlink handle: %w", err)
	}
	m, err := NewNftMarker(opts...)
	if err != nil {
		ct.Close()
		h.Close()
		closeNS(ns)
		return nil, err
	}
	b := New(h, &kernelMarker{NftMarker: m, h: h, ct: ct, ns: ns}, WithLogger(m.base))
	b.forgetUDP = conntrackFlows{h: ct, log: b.log}.forget
	return b, nil
}

// sysctls are the IPVS settings of the namespace the balancer relies on;
// each is per namespace. docs/networking.md says why in short.
var sysctls = []struct{ path, value string }{
	// The masquerade in postrouting (a nat chain) sees IPVS's
	// connections only through conntrack.
	{"/proc/sys/net/ipv4/vs/conntrack", "1"},
	// A packet of a connection whose real server was deleted expires the
	// entry (the packet is dropped; the client's retransmission or next
	// datagram is scheduled to a live backend), instead of every packet
	// being dropped until the entry times out: the stale entries of
	// removed tasks of moby/moby#30464. With a quiesced (weight 0) real
	// server, a new connection reusing an old one's ports is rescheduled
	// too.
	{"/proc/sys/net/ipv4/vs/expire_nodest_conn", "1"},
	// Persistence templates of quiesced real servers expire; only
	// matters with persistence, which the balancer does not use yet.
	{"/proc/sys/net/ipv4/vs/expire_quiescent_template", "1"},
	// The kernel's default, made sure of: a new connection reusing the
	// ports of one in TIME_WAIT is scheduled afresh, so it never lands on
	// a quiesced real server. Before Linux 5.9 that cost the client a
	// 1 s SYN retransmit with conntrack on (kube-proxy sets 0 there).
	{"/proc/sys/net/ipv4/vs/conn_reuse_mode", "1"},
}

// Conntrack's timeouts, which IPVS's are set to, and the kernel's defaults
// for them where nf_conntrack is not loaded yet.
const (
	ctTCPEstablished        = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"
	ctUDPStream             = "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream"
	defaultCTTCPEstablished = 5 * 24 * time.Hour
	defaultCTUDPStream      = 120 * time.Second
	// maxIPVSTimeout is the largest timeout the kernel takes at any HZ up
	// to 1000 (ip_vs_set_timeout refuses more than INT_MAX/HZ seconds).
	maxIPVSTimeout = math.MaxInt32 / 1000 * time.Second
)

// configure writes sysctls in the namespace at path and sets IPVS's
// timeouts to conntrack's there. IPVS forgets an idle TCP connection after
// 900 s where conntrack keeps it for 5 days, and then answers the
// connection's next packet with a reset from the node (the packet is no
// SYN, so IPVS does not schedule it, and the node has no socket for it):
// long-idle connections through the mesh broke (moby/moby#31208). UDP is
// aligned too, so an idle flow picks a backend afresh when conntrack does,
// as with the nft backend. FIN timeouts stay: IPVS's 120 s is conntrack's.
func configure(path string, h *ipvs.Handle) error {
	var cfg ipvs.Config
	err := network.InNetNS(path, func() error {
		var errs []error
		for _, s := range sysctls {
			cur, err := os.ReadFile(s.path)
			if err == nil && string(bytes.TrimSpace(cur)) == s.value {
				continue
			}
			if err := os.WriteFile(s.path, []byte(s.value+"\n"), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("set %s to %s: %w", s.path, s.value, err))
			}
		}
		cfg = timeouts(os.ReadFile)
		return errors.Join(errs...)
	})
	if err != nil {
		return fmt.Errorf("IPVS sysctls: %w", err)
	}
	if err := h.SetConfig(&cfg); err != nil {
		return fmt.Errorf("set IPVS timeouts (TCP %s, UDP %s): %w", cfg.TimeoutTCP, cfg.TimeoutUDP, err)
	}
	return nil
}

// timeouts are IPVS's TCP and UDP timeouts for conntrack's, as read by
// read. TimeoutTCPFin stays 0, which SetConfig leaves as it is.
func timeouts(read func(string) ([]byte, error)) ipvs.Config {
	get := func(path string, def time.Duration) time.Duration {
		b, err := read(path)
		if err != nil {
			return def
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 32)
		if err != nil || n == 0 {
			return def
		}
		return min(time.Duration(n)*time.Second, maxIPVSTimeout)
	}
	return ipvs.Config{TimeoutTCP: get(ctTCPEstablished, defaultCTTCPEstablished), TimeoutUDP: get(ctUDPStream, defaultCTUDPStream)}
}

// kernelMarker closes the IPVS handle and the namespace with the marker:
// Balancer.Close closes its marker last, once it is done with IPVS.
type kernelMarker struct {
	*NftMarker
	h  *ipvs.Handle
	ct *netlink.Handle
	ns netns.NsHandle
}

func (k *kernelMarker) Close() error {
	err := k.NftMarker.Close()
	k.h.Close()
	k.ct.Close()
	closeNS(k.ns)
	return err
}

func closeNS(ns netns.NsHandle) {
	if ns.IsOpen() {
		ns.Close()
	}
}
