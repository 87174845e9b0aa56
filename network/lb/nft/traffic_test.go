package nft

import (
	"testing"

	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/lbtest"
)

// TestKernelTraffic runs the traffic suite every backend passes, with the
// VIPs on the router's loopback as the network agent puts them.
func TestKernelTraffic(t *testing.T) {
	lbtest.RunTraffic(t, func(t *testing.T, tp *lbtest.Topology) lb.Balancer { return newBalancer(t, tp) })
}
