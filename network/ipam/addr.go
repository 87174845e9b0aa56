package ipam

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
)

// Errors the callers test for with errors.Is; the wrapping message names the
// subnet or address.
var (
	ErrExhausted    = errors.New("no free address")
	ErrInUse        = errors.New("already allocated")
	ErrNotInSubnet  = errors.New("not in subnet")
	ErrReserved     = errors.New("reserved")
	ErrNotAllocated = errors.New("not allocated")
)

// MaxPrefixBits is the longest subnet an overlay network may have: a /30 still
// leaves one address for a task once the network, broadcast and gateway
// addresses are kept back.
const MaxPrefixBits = 30

// ParseSubnet parses a user-given overlay subnet ("10.20.0.0/24"). Only IPv4
// is supported. A prefix with host bits set is refused rather than silently
// masked, since "10.20.0.5/24" is more likely a typo than a wish.
func ParseSubnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("parse subnet %q: %w", s, err)
	}
	if err := CheckSubnet(p); err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

// CheckSubnet reports why p cannot be an overlay subnet, or nil.
func CheckSubnet(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("subnet %s: invalid prefix", p)
	}
	if !p.Addr().Is4() {
		return fmt.Errorf("subnet %s: only IPv4 subnets are supported", p)
	}
	if p.Masked() != p {
		return fmt.Errorf("subnet %s has host bits set: did you mean %s?", p, p.Masked())
	}
	if p.Bits() > MaxPrefixBits {
		return fmt.Errorf("subnet %s is too small: the longest prefix is /%d", p, MaxPrefixBits)
	}
	return nil
}

// Overlaps reports whether a and b share any address. Prefixes of different
// families never overlap; invalid prefixes overlap nothing.
func Overlaps(a, b netip.Prefix) bool {
	if !a.IsValid() || !b.IsValid() {
		return false
	}
	return a.Masked().Overlaps(b.Masked())
}

// Allocator hands out the addresses of one IPv4 subnet. The network and
// broadcast addresses and the gateway are never handed out. It is safe for
// concurrent use.
type Allocator struct {
	mu      sync.Mutex
	subnet  netip.Prefix
	gateway netip.Addr
	ords    *ordinals
}

// NewAllocator returns an allocator over subnet. A zero gateway means the
// first host address (10.0.0.1 in 10.0.0.0/24), as Docker does.
func NewAllocator(subnet netip.Prefix, gateway netip.Addr) (*Allocator, error) {
	if err := CheckSubnet(subnet); err != nil {
		return nil, err
	}
	first := toUint(subnet.Addr())
	last := first | (1<<(32-subnet.Bits()) - 1)
	a := &Allocator{subnet: subnet, ords: newOrdinals(first+1, last-1)}
	if !gateway.IsValid() {
		gateway = subnet.Addr().Next()
	}
	if err := a.check(gateway); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	a.gateway = gateway
	a.ords.mark(toUint(gateway))
	return a, nil
}

// Subnet returns the subnet addresses are taken from.
func (a *Allocator) Subnet() netip.Prefix { return a.subnet }

// Gateway returns the gateway address, never handed out.
func (a *Allocator) Gateway() netip.Addr { return a.gateway }

// Allocate returns a free address.
func (a *Allocator) Allocate() (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.ords.take()
	if !ok {
		return netip.Addr{}, fmt.Errorf("subnet %s: %w (%d addresses, all in use)", a.subnet, ErrExhausted, a.ords.size()-1)
	}
	return fromUint(v), nil
}

// AllocateSpecific marks addr as used, for a user-chosen address.
func (a *Allocator) AllocateSpecific(addr netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.check(addr); err != nil {
		return err
	}
	v := toUint(addr)
	if addr == a.gateway {
		return fmt.Errorf("address %s is the gateway of %s: %w", addr, a.subnet, ErrReserved)
	}
	if a.ords.isUsed(v) {
		return fmt.Errorf("address %s in %s: %w", addr, a.subnet, ErrInUse)
	}
	a.ords.mark(v)
	return nil
}

// Release returns addr to the free set.
func (a *Allocator) Release(addr netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.check(addr); err != nil {
		return err
	}
	if addr == a.gateway {
		return fmt.Errorf("release %s: the gateway of %s: %w", addr, a.subnet, ErrReserved)
	}
	v := toUint(addr)
	if !a.ords.isUsed(v) {
		return fmt.Errorf("release %s in %s: %w", addr, a.subnet, ErrNotAllocated)
	}
	a.ords.unmark(v)
	return nil
}

// Restore marks every address in used as allocated, as after a manager
// restart. The gateway may appear in the list. Every valid address is marked
// even when others are refused; the error lists the refused ones.
func (a *Allocator) Restore(used []netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for _, addr := range used {
		if addr == a.gateway {
			continue
		}
		if err := a.check(addr); err != nil {
			errs = append(errs, err)
			continue
		}
		v := toUint(addr)
		if a.ords.isUsed(v) {
			errs = append(errs, fmt.Errorf("restore %s in %s: listed twice: %w", addr, a.subnet, ErrInUse))
			continue
		}
		a.ords.mark(v)
	}
	return errors.Join(errs...)
}

// InUse returns how many addresses are allocated, the gateway included.
func (a *Allocator) InUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.ords.used)
}

// check reports whether addr could ever be handed out by a.
func (a *Allocator) check(addr netip.Addr) error {
	if !addr.Is4() || !a.subnet.Contains(addr) {
		return fmt.Errorf("address %s: %w %s", addr, ErrNotInSubnet, a.subnet)
	}
	if !a.ords.contains(toUint(addr)) {
		return fmt.Errorf("address %s is the network or broadcast address of %s: %w", addr, a.subnet, ErrReserved)
	}
	return nil
}

func toUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func fromUint(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// MACFromIP derives the MAC of an overlay address as Docker does: 02:42 (a
// locally administered unicast prefix) then the four IPv4 bytes. Tasks and
// node addresses on an overlay get theirs this way, so every node can
// program a remote endpoint's FDB and neighbour entries from its IP alone.
func MACFromIP(ip netip.Addr) net.HardwareAddr {
	a := ip.As4()
	return net.HardwareAddr{0x02, 0x42, a[0], a[1], a[2], a[3]}
}
