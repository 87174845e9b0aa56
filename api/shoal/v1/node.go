package shoalv1

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Bounds on what a node says about itself. A description is stored in
// raft and sent to every operator who lists nodes; nothing in it is left
// unbounded.
const (
	maxHostname = 253 // DNS
	maxLabel    = 63
	maxOSArch   = 32
	maxEngine   = 128
	// maxNanoCPUs and maxMemory are far beyond any machine, and keep sums
	// over many nodes from overflowing.
	maxNanoCPUs = 1 << 20 * 1e9
	maxMemory   = 1 << 50
)

// ValidateNodeDescription checks what a node reports about itself, at join
// and at every session: a hostname that is a DNS name (what placement
// constraints and `node` commands name it by), short plain os, arch and
// engine strings, sizes that are not negative or absurd, and a data
// address that can be a VXLAN peer (ValidDataAddr). Whether the data
// address is the node's own is for the managers to check against what
// they saw (see the dispatcher).
func ValidateNodeDescription(d *NodeDescription) error {
	if d == nil {
		return nil
	}
	if err := ValidateHostname(d.GetHostname()); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{{"os", d.GetOs()}, {"arch", d.GetArch()}} {
		if len(f.v) > maxOSArch || strings.IndexFunc(f.v, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') }) >= 0 {
			return specErr("description."+f.name, "%q: want at most %d of a-z, 0-9 and _, as Go names it", truncated(f.v), maxOSArch)
		}
	}
	if e := d.GetEngine(); len(e) > maxEngine || strings.IndexFunc(e, func(r rune) bool { return r < ' ' || r > '~' }) >= 0 {
		return specErr("description.engine", "%q: want at most %d printable ASCII characters", truncated(e), maxEngine)
	}
	if c := d.GetNanoCpus(); c < 0 || c > maxNanoCPUs {
		return specErr("description.nano_cpus", "%d: want 0 to %d", c, int64(maxNanoCPUs))
	}
	if m := d.GetMemoryBytes(); m < 0 || m > maxMemory {
		return specErr("description.memory_bytes", "%d: want 0 to %d", m, int64(maxMemory))
	}
	if a := d.GetDataAddr(); a != "" {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return specErr("description.data_addr", "%q: want an IP address", truncated(a))
		}
		if err := ValidDataAddr(ip); err != nil {
			return specErr("description.data_addr", "%v", err)
		}
	}
	if err := ValidWireGuardKey(d.GetWireguardKey()); err != nil {
		return specErr("description.wireguard_key", "%v", err)
	}
	return nil
}

// WireGuardKeyLen is the length of a WireGuard (Curve25519) public key.
const WireGuardKeyLen = 32

// ValidWireGuardKey reports why key cannot be a node's WireGuard public
// key: it is empty (the node has no WireGuard) or 32 bytes, not all zero
// (the all-zero key is no public key: WireGuard refuses a peer with it).
func ValidWireGuardKey(key []byte) error {
	if len(key) == 0 {
		return nil
	}
	if len(key) != WireGuardKeyLen {
		return fmt.Errorf("%d bytes: want a %d-byte public key, or none when the node has no WireGuard", len(key), WireGuardKeyLen)
	}
	if !slices.ContainsFunc(key, func(b byte) bool { return b != 0 }) {
		return errors.New("all zero: want the node's public key, or none when the node has no WireGuard")
	}
	return nil
}

// ValidateHostname checks a node's hostname: labels of letters, digits,
// '-' and '_' (lab and container hosts use it), each 1 to 63 long and not
// starting or ending with '-', joined by dots, 253 at most.
func ValidateHostname(h string) error {
	if h == "" {
		return specErr("description.hostname", "missing: a node needs a hostname (shoald --hostname)")
	}
	if len(h) > maxHostname {
		return specErr("description.hostname", "%q: longer than %d", truncated(h), maxHostname)
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > maxLabel || l[0] == '-' || l[len(l)-1] == '-' ||
			strings.IndexFunc(l, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
			}) >= 0 {
			return specErr("description.hostname", "%q: want DNS labels (letters, digits, '-', '_'; 1 to %d each) joined by dots", truncated(h), maxLabel)
		}
	}
	return nil
}

// ValidDataAddr reports why ip cannot be a node's underlay address, where
// every other node sends its VXLAN traffic: it must name one host that
// other hosts can reach, so not unspecified, multicast, broadcast or
// link-local, and without a zone. A loopback address is valid only for a
// node on the managers' own host (a cluster of one host, as tests run):
// the dispatcher takes it only from a session that comes from loopback.
func ValidDataAddr(ip netip.Addr) error {
	ip = ip.Unmap()
	switch {
	case !ip.IsValid():
		return fmt.Errorf("no address")
	case ip.Zone() != "":
		return fmt.Errorf("%s: an address with a zone is not reachable from other hosts", ip)
	case ip.IsUnspecified():
		return fmt.Errorf("%s: the unspecified address names no host", ip)
	case ip.IsMulticast(), ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s: a multicast or broadcast address names no single host", ip)
	case ip.IsLinkLocalUnicast():
		return fmt.Errorf("%s: a link-local address is not routed between hosts", ip)
	}
	return nil
}

// truncated shortens a bad value for an error message.
func truncated(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
