package lb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Protocol is a transport protocol a frontend balances.
type Protocol string

// Protocols a frontend may use.
const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// Number is the IANA protocol number, as the kernel keys it.
func (p Protocol) Number() (uint8, error) {
	switch p {
	case TCP:
		return 6, nil
	case UDP:
		return 17, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want %q or %q)", string(p), TCP, UDP)
}

// Backend is one place traffic for a frontend may be sent: a task's address
// on the network the frontend balances over.
type Backend struct {
	Addr netip.Addr
	// Port is 0 exactly when the frontend balances every port (a VIP
	// frontend with Port 0): the destination port is kept.
	Port uint16
}

func (b Backend) String() string { return netip.AddrPortFrom(b.Addr, b.Port).String() }

// Frontend is something traffic is balanced for: a published port on every
// node address (ingress), or a service VIP.
type Frontend struct {
	// Name is the stable key a backend tracks the frontend by across Applies,
	// e.g. "svc:<service id>:8080/tcp" or "vip:<service id>:80/tcp".
	Name     string
	Protocol Protocol
	// Port is the published port on any local address (and from the host
	// itself) when VIP is not valid — ingress mode — or the VIP's port.
	// Port 0 on a VIP frontend balances every port of the VIP (of its
	// protocol) and keeps the destination port, as Swarm's fwmark VIPs do:
	// its backends have port 0 too.
	Port uint16
	// VIP, when valid, balances traffic to VIP:Port instead of the published
	// port (service VIPs, for traffic from tasks).
	VIP netip.Addr
	// Backends in a stable order. Empty means the frontend exists but has no
	// running task: clients are refused (TCP reset, ICMP port unreachable)
	// rather than left to time out.
	Backends []Backend
	// Masquerade SNATs to the node so replies come back through it (ingress).
	// When false the client's address is kept, so replies must pass the node
	// some other way: local backends routing through it (source-IP mode), or
	// VIP backends whose replies the node's bridges hand to conntrack
	// (br_netfilter). Either way a connection sent back to the task that
	// opened it is masqueraded (hairpin).
	Masquerade bool
}

// IsVIP reports whether the frontend balances a VIP rather than a published port.
func (f Frontend) IsVIP() bool { return f.VIP.IsValid() }

// IsAnyPort reports whether the frontend balances every port of its VIP.
func (f Frontend) IsAnyPort() bool { return f.VIP.IsValid() && f.Port == 0 }

// State is the whole desired load balancer state of a node.
type State struct {
	Frontends []Frontend
}

// Balancer programs desired state into the kernel. Apply computes the
// difference from what it programmed last and applies only that, atomically;
// after any error the next Apply does a full resync (flush and rebuild), so
// the kernel never stays half-programmed. Close removes everything the
// Balancer made.
type Balancer interface {
	Apply(ctx context.Context, s State) error
	Close() error
}

// Validate checks a desired state before a backend touches the kernel. Every
// problem is reported (joined), each naming its frontend.
func Validate(s State) error {
	var errs []error
	names := make(map[string]bool, len(s.Frontends))
	// Two frontends on the same key would race for one map slot.
	keys := make(map[key]string, len(s.Frontends))
	for i, f := range s.Frontends {
		if f.Name == "" {
			errs = append(errs, fmt.Errorf("frontend #%d: empty name", i))
			continue
		}
		if names[f.Name] {
			errs = append(errs, fmt.Errorf("frontend %q: duplicate name", f.Name))
			continue
		}
		names[f.Name] = true
		if _, err := f.Protocol.Number(); err != nil {
			errs = append(errs, fmt.Errorf("frontend %q: %w", f.Name, err))
		}
		if f.Port == 0 && !f.VIP.IsValid() {
			errs = append(errs, fmt.Errorf("frontend %q: port 0 (only a VIP frontend may balance every port)", f.Name))
		}
		if f.VIP.IsValid() && (f.VIP.Zone() != "" || f.VIP.IsUnspecified()) {
			errs = append(errs, fmt.Errorf("frontend %q: VIP %s is not a usable address", f.Name, f.VIP))
		}
		k := key{f.Protocol, f.Port, f.VIP}
		if other, ok := keys[k]; ok {
			errs = append(errs, fmt.Errorf("frontend %q: %s is already balanced by frontend %q", f.Name, Key(f), other))
		} else {
			keys[k] = f.Name
		}
		var seen map[Backend]bool
		if len(f.Backends) > smallBackends {
			seen = make(map[Backend]bool, len(f.Backends))
		}
		for i, b := range f.Backends {
			dup := seen[b]
			if seen == nil {
				dup = slices.Contains(f.Backends[:i], b)
			}
			switch {
			case !b.Addr.IsValid():
				errs = append(errs, fmt.Errorf("frontend %q: backend with no address", f.Name))
			case b.Port == 0 && f.Port != 0:
				errs = append(errs, fmt.Errorf("frontend %q: backend %s has port 0", f.Name, b.Addr))
			case b.Port != 0 && f.Port == 0:
				errs = append(errs, fmt.Errorf("frontend %q: backend %s has a port, but the frontend balances every port and keeps it", f.Name, b))
			case f.VIP.IsValid() && b.Addr.Is4() != f.VIP.Is4():
				errs = append(errs, fmt.Errorf("frontend %q: backend %s is not in the VIP's address family (%s)", f.Name, b, f.VIP))
			case len(f.Backends) > 0 && f.Backends[0].Addr.IsValid() && b.Addr.Is4() != f.Backends[0].Addr.Is4():
				// One numgen spreads over all backends, so a packet of one
				// family must never pick a backend of the other.
				errs = append(errs, fmt.Errorf("frontend %q: backends mix IPv4 and IPv6 (%s and %s)", f.Name, f.Backends[0], b))
			case dup:
				errs = append(errs, fmt.Errorf("frontend %q: backend %s listed twice", f.Name, b))
			case b.Addr.Zone() != "":
				errs = append(errs, fmt.Errorf("frontend %q: backend %s has a zone", f.Name, b))
			}
			if seen != nil {
				seen[b] = true
			}
		}
	}
	return errors.Join(errs...)
}

// smallBackends is the size up to which duplicate backends are found by a
// linear scan: cheaper than a map for the few replicas most services have,
// and Validate runs on every Apply.
const smallBackends = 16

type key struct {
	p    Protocol
	port uint16
	vip  netip.Addr
}

// Key is what the kernel matches a frontend on: protocol and port, plus the
// VIP for VIP frontends.
func Key(f Frontend) string {
	if f.IsAnyPort() {
		if f.VIP.Is6() {
			return fmt.Sprintf("[%s]:*/%s", f.VIP, f.Protocol)
		}
		return fmt.Sprintf("%s:*/%s", f.VIP, f.Protocol)
	}
	if f.VIP.IsValid() {
		return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.VIP, f.Port), f.Protocol)
	}
	return fmt.Sprintf("published %d/%s", f.Port, f.Protocol)
}
