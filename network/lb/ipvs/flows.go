package ipvs

import (
	"errors"
	"log/slog"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/network/lb"
)

// conntrackFlows deletes the conntrack entries of UDP backends that left a
// frontend, as the nft backend does. IPVS keeps conntrack entries of its
// connections (vs/conntrack=1); a client sending from one port keeps its
// entry alive, and with it the old backend: expire_nodest_conn ends the
// IPVS connection at the next datagram but drops that datagram, because
// conntrack still holds the old translation. Without the entry, that
// datagram is scheduled to a backend that serves.
type conntrackFlows struct {
	h   *netlink.Handle
	log *slog.Logger
}

// forget deletes the UDP conntrack entries of frontend f towards backends.
func (c conntrackFlows) forget(f lb.Frontend, backends []lb.Backend) {
	var filters []netlink.CustomConntrackFilter
	for _, be := range backends {
		flt := &netlink.ConntrackFilter{}
		errs := []error{
			flt.AddProtocol(unix.IPPROTO_UDP),
			flt.AddIP(netlink.ConntrackReplySrcIP, be.Addr.AsSlice()),
		}
		if f.Port != 0 { // an any-port VIP's flows are on every port
			errs = append(errs, flt.AddPort(netlink.ConntrackOrigDstPort, f.Port))
		}
		if f.VIP.IsValid() {
			errs = append(errs, flt.AddIP(netlink.ConntrackOrigDstIP, f.VIP.AsSlice()))
		}
		if err := errors.Join(errs...); err != nil {
			c.log.Warn("build conntrack filter", "frontend", f.Name, "backend", be.String(), "err", err)
			continue
		}
		filters = append(filters, flt)
	}
	if len(filters) == 0 {
		return
	}
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		n, err := c.h.ConntrackDeleteFilters(netlink.ConntrackTable, family, filters...)
		if err != nil {
			c.log.Warn("delete conntrack entries of removed UDP backends", "frontend", f.Name, "family", family, "err", err)
			continue
		}
		if n > 0 {
			c.log.Debug("deleted conntrack entries of removed UDP backends", "frontend", f.Name, "family", family, "entries", n)
		}
	}
}
