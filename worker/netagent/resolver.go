package netagent

import (
	"log/slog"
	"net/netip"

	"github.com/shoal-project/shoal/network/dns"
)

// resolver is the embedded DNS server as the agent drives it (a
// *dns.Server).
type resolver interface {
	// SetAddrs makes it listen (UDP and TCP) on exactly these gateway
	// addresses, each answering only its prefix's subnet.
	SetAddrs(gateways []netip.Prefix) error
	Close() error
}

var _ resolver = (*dns.Server)(nil)

// newResolver builds the node's resolver; it listens nowhere until the
// first reconcile gives it the gateways.
func newResolver(cfg Config, lookup dns.Lookup, log *slog.Logger) (resolver, error) {
	s, err := dns.NewServer(dns.Config{
		Port:      cfg.DNSPort,
		Upstreams: cfg.Upstreams,
		Lookup:    lookup,
		Logger:    log.With("component", "dns"),
		NetNSPath: cfg.NetNSPath,
	})
	if err != nil {
		return nil, err // not a nil *dns.Server in a non-nil interface
	}
	return s, nil
}
