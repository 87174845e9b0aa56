package ipvs

import (
	"errors"
	"fmt"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netns"
)

// ErrNoIPVS is returned by NewKernel on a kernel without IPVS.
var ErrNoIPVS = errors.New("the kernel has no IPVS (load the ip_vs module, or use the nftables load balancer)")

// NewKernel returns a Balancer on the kernel's IPVS with an NftMarker,
// inside the network namespace at netnsPath ("" for the caller's). It
// refuses with ErrNoIPVS where Available says there is no IPVS, because
// there moby/ipvs would report success and program nothing. Close releases
// everything it opened.
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
	m, err := NewNftMarker(opts...)
	if err != nil {
		h.Close()
		closeNS(ns)
		return nil, err
	}
	return New(h, &kernelMarker{NftMarker: m, h: h, ns: ns}), nil
}

// kernelMarker closes the IPVS handle and the namespace with the marker:
// Balancer.Close closes its marker last, once it is done with IPVS.
type kernelMarker struct {
	*NftMarker
	h  *ipvs.Handle
	ns netns.NsHandle
}

func (k *kernelMarker) Close() error {
	err := k.NftMarker.Close()
	k.h.Close()
	closeNS(k.ns)
	return err
}

func closeNS(ns netns.NsHandle) {
	if ns.IsOpen() {
		ns.Close()
	}
}
