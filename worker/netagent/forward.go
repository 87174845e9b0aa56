package netagent

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	shoalnet "github.com/shoal-project/shoal/network"
)

// sysctl is one setting the node's namespace needs, as its /proc/sys path.
type sysctl struct {
	path, value string
}

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

var (
	// ipForward: the node routes mesh and VIP traffic between its bridges
	// and the world.
	ipForward = sysctl{ipForwardPath, "1"}
	// bridgeNFCall: bridged IPv4 traffic goes through netfilter, so that
	// a VIP backend's reply to a task, bridged over the overlay, is
	// un-NATed on its way by conntrack or IPVS (what kube-proxy needs
	// br_netfilter for).
	bridgeNFCall = sysctl{"/proc/sys/net/bridge/bridge-nf-call-iptables", "1"}
)

// setSysctls writes the settings in the namespace at path ("" = the
// caller's): /proc/sys/net shows the namespace of the thread that opens it.
func setSysctls(path string, settings []sysctl) error {
	if err := shoalnet.InNetNS(path, func() error { return writeSysctls(settings) }); err != nil {
		return fmt.Errorf("sysctl: %w", err)
	}
	return nil
}

func writeSysctls(settings []sysctl) error {
	var errs []error
	for _, s := range settings {
		cur, err := os.ReadFile(s.path)
		if err == nil && bytes.Equal(bytes.TrimSpace(cur), []byte(s.value)) {
			continue
		}
		if err := os.WriteFile(s.path, []byte(s.value+"\n"), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("set %s to %s: %w", s.path, s.value, err))
		}
	}
	return errors.Join(errs...)
}
