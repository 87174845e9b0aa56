package ipam

import (
	"errors"
	"fmt"
	"sync"
)

// VNI bounds. VXLAN identifiers are 24 bits; Swarm starts overlay VNIs at
// 4096 so they never collide with VLAN-derived numbering (0-4095) that an
// operator may already use on the underlay.
const (
	DefaultMinVNI uint32 = 4096
	MaxVNI        uint32 = 1<<24 - 1
)

// ErrVNIOutOfRange is wrapped when a VNI lies outside the allocator's range.
var ErrVNIOutOfRange = errors.New("VNI out of range")

// VNIAllocator hands out VXLAN network identifiers from [min, max]. It is
// safe for concurrent use.
type VNIAllocator struct {
	mu   sync.Mutex
	ords *ordinals
}

// NewVNIAllocator returns an allocator over [min, max].
func NewVNIAllocator(min, max uint32) (*VNIAllocator, error) {
	if min == 0 || max > MaxVNI || min > max {
		return nil, fmt.Errorf("VNI range %d-%d: need 1 <= min <= max <= %d", min, max, MaxVNI)
	}
	return &VNIAllocator{ords: newOrdinals(min, max)}, nil
}

// Allocate returns a free VNI.
func (a *VNIAllocator) Allocate() (uint32, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.ords.take()
	if !ok {
		return 0, fmt.Errorf("VNI range %d-%d: all in use: %w", a.ords.lo, a.ords.hi, ErrExhausted)
	}
	return v, nil
}

// AllocateSpecific marks vni as used, for a user-chosen VNI.
func (a *VNIAllocator) AllocateSpecific(vni uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.check(vni); err != nil {
		return err
	}
	if a.ords.isUsed(vni) {
		return fmt.Errorf("VNI %d: %w", vni, ErrInUse)
	}
	a.ords.mark(vni)
	return nil
}

// Release returns vni to the free set.
func (a *VNIAllocator) Release(vni uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.check(vni); err != nil {
		return err
	}
	if !a.ords.isUsed(vni) {
		return fmt.Errorf("release VNI %d: %w", vni, ErrNotAllocated)
	}
	a.ords.unmark(vni)
	return nil
}

// Restore marks every VNI in used as allocated; see Allocator.Restore.
func (a *VNIAllocator) Restore(used []uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for _, v := range used {
		if err := a.check(v); err != nil {
			errs = append(errs, err)
			continue
		}
		if a.ords.isUsed(v) {
			errs = append(errs, fmt.Errorf("restore VNI %d: listed twice: %w", v, ErrInUse))
			continue
		}
		a.ords.mark(v)
	}
	return errors.Join(errs...)
}

func (a *VNIAllocator) check(vni uint32) error {
	if !a.ords.contains(vni) {
		return fmt.Errorf("VNI %d not in %d-%d: %w", vni, a.ords.lo, a.ords.hi, ErrVNIOutOfRange)
	}
	return nil
}
