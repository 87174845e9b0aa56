package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// ErrOverlap is wrapped by Pool.Reserve when a subnet overlaps one in use.
var ErrOverlap = errors.New("overlaps an existing network")

// Default pool for networks created without --subnet: Swarm's
// default-addr-pool, 10.0.0.0/8 carved into /24s.
var (
	DefaultPoolBase = netip.MustParsePrefix("10.0.0.0/8")
	DefaultPoolSize = 24
)

// Pool tracks every subnet in use in the cluster (from the pool or chosen by
// a user) and carves free subnets out of a base prefix. It is safe for
// concurrent use.
type Pool struct {
	mu   sync.Mutex
	base netip.Prefix
	bits int
	used []netip.Prefix // sorted by address, no two overlapping
}

// NewPool returns a pool handing out /bits subnets of base.
func NewPool(base netip.Prefix, bits int) (*Pool, error) {
	if err := CheckSubnet(base); err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	if bits < base.Bits() || bits > MaxPrefixBits {
		return nil, fmt.Errorf("pool %s: subnet size /%d must be between /%d and /%d", base, bits, base.Bits(), MaxPrefixBits)
	}
	return &Pool{base: base, bits: bits}, nil
}

// Reserve records subnet as in use, refusing one that overlaps a subnet
// already in use (the error names it). The subnet need not be in the base.
func (p *Pool) Reserve(subnet netip.Prefix) error {
	if err := CheckSubnet(subnet); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if o, ok := p.overlapping(subnet); ok {
		if o == subnet {
			return fmt.Errorf("subnet %s: already in use: %w", subnet, ErrOverlap)
		}
		return fmt.Errorf("subnet %s %w %s", subnet, ErrOverlap, o)
	}
	p.insert(subnet)
	return nil
}

// Allocate returns the lowest free subnet of the pool's size in the base and
// records it as in use.
func (p *Pool) Allocate() (netip.Prefix, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	step := uint64(1) << (32 - p.bits)
	end := uint64(toUint(p.base.Addr())) + (uint64(1) << (32 - p.base.Bits()))
	for c := uint64(toUint(p.base.Addr())); c < end; {
		cand := netip.PrefixFrom(fromUint(uint32(c)), p.bits)
		o, ok := p.overlapping(cand)
		if !ok {
			p.insert(cand)
			return cand, nil
		}
		// Skip past the overlapping subnet, rounded up to the next candidate.
		next := uint64(toUint(o.Addr())) + (uint64(1) << (32 - o.Bits()))
		if next < c+step {
			next = c + step
		}
		c = (next + step - 1) / step * step
	}
	return netip.Prefix{}, fmt.Errorf("pool %s: no free /%d subnet: %w", p.base, p.bits, ErrExhausted)
}

// Release forgets subnet; releasing one not in use is a no-op.
func (p *Pool) Release(subnet netip.Prefix) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.used = slices.DeleteFunc(p.used, func(u netip.Prefix) bool { return u == subnet })
}

// InUse returns the subnets in use, in address order.
func (p *Pool) InUse() []netip.Prefix {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.used)
}

func (p *Pool) overlapping(s netip.Prefix) (netip.Prefix, bool) {
	for _, u := range p.used {
		if Overlaps(u, s) {
			return u, true
		}
	}
	return netip.Prefix{}, false
}

func (p *Pool) insert(s netip.Prefix) {
	i, _ := slices.BinarySearchFunc(p.used, s, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	p.used = slices.Insert(p.used, i, s)
}
