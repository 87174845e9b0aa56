package netagent

import (
	"log/slog"
	"net/netip"
)

// resolver is the embedded DNS server (network/dns) as the agent drives it.
type resolver interface {
	// SetAddrs makes it listen (UDP and TCP) on exactly these addresses.
	SetAddrs(addrs []netip.Addr) error
	Close() error
}

// lookupFunc is network/dns's Lookup: ok=false means not ours, forward.
type lookupFunc func(src netip.Addr, name string) (addrs []netip.Addr, ok bool)

// newResolver starts the node's resolver. Until network/dns is in the tree
// the agent runs without one (nil) and says so.
var newResolver = func(cfg Config, lookup lookupFunc, log *slog.Logger) (resolver, error) {
	log.Warn("embedded DNS resolver not built in yet; tasks' service names will not resolve")
	return nil, nil
}
