package shoalv1

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Protocols, publishing modes and traffic policies of a PortConfig,
// spelled as Docker spells them.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"

	// ModeIngress publishes the port on every node through the routing mesh;
	// the port is reserved cluster-wide.
	ModeIngress = "ingress"
	// ModeHost publishes the port only on nodes running a task, straight to
	// it; two services may use the same host port on different nodes, so it
	// is not reserved cluster-wide.
	ModeHost = "host"

	// TrafficCluster (the default for ingress ports) balances from every
	// node to every task and masquerades, so replies return through the
	// node that took the connection.
	TrafficCluster = "cluster"
	// TrafficLocal sends a node's connections only to its own tasks,
	// without masquerade, so tasks see the client's address.
	TrafficLocal = "local"
)

// ErrInvalid is wrapped by every error of the port rules here. The
// managers' allocator uses the same value for the requests it refuses as
// malformed, so a bad port is the same error (InvalidArgument at the API
// edge) whether the CLI or the allocator finds it.
var ErrInvalid = errors.New("invalid request")

// maxPort is the highest TCP or UDP port.
const maxPort = 1<<16 - 1

// ParsePublish parses a --publish value in Docker's short form
// ("8080:80", "8080:80/udp", "80", "80/udp") or long form
// ("published=8080,target=80,protocol=udp,mode=host",
// "target=80,traffic=local"). The result is normalised: protocol and mode
// are always set; traffic only when given (it is only valid in ingress
// mode).
func ParsePublish(s string) (*PortConfig, error) {
	var (
		p   *PortConfig
		err error
	)
	if strings.Contains(s, "=") {
		p, err = parseLong(s)
	} else {
		p, err = parseShort(s)
	}
	if err != nil {
		return nil, fmt.Errorf("publish %q: %w", s, err)
	}
	return p, nil
}

func parseShort(s string) (*PortConfig, error) {
	p := &PortConfig{Protocol: ProtocolTCP, Mode: ModeIngress}
	ports, proto, hasProto := strings.Cut(s, "/")
	if hasProto {
		var err error
		if p.Protocol, err = parseProtocol(proto); err != nil {
			return nil, err
		}
	}
	parts := strings.Split(ports, ":")
	switch len(parts) {
	case 1:
		t, err := parsePort("target", parts[0])
		if err != nil {
			return nil, err
		}
		p.Target = t
	case 2:
		pub, err := parsePort("published", parts[0])
		if err != nil {
			return nil, err
		}
		t, err := parsePort("target", parts[1])
		if err != nil {
			return nil, err
		}
		p.Published, p.Target = pub, t
	default:
		return nil, fmt.Errorf("%w: want [PUBLISHED:]TARGET[/PROTOCOL]; publishing on one host address is not supported", ErrInvalid)
	}
	return p, nil
}

func parseLong(s string) (*PortConfig, error) {
	p := &PortConfig{Protocol: ProtocolTCP, Mode: ModeIngress}
	seen := map[string]bool{}
	for field := range strings.SplitSeq(s, ",") {
		key, val, ok := strings.Cut(field, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		val = strings.TrimSpace(val)
		if !ok {
			return nil, fmt.Errorf("%w: field %q is not KEY=VALUE", ErrInvalid, field)
		}
		if seen[key] {
			return nil, fmt.Errorf("%w: %s given twice", ErrInvalid, key)
		}
		seen[key] = true
		var err error
		switch key {
		case "published":
			p.Published, err = parsePort("published", val)
		case "target":
			p.Target, err = parsePort("target", val)
		case "protocol":
			p.Protocol, err = parseProtocol(val)
		case "mode":
			p.Mode, err = parseMode(val)
		case "traffic":
			p.Traffic, err = parseTraffic(val)
		default:
			err = fmt.Errorf("%w: unknown key %q (want published, target, protocol, mode or traffic)", ErrInvalid, key)
		}
		if err != nil {
			return nil, err
		}
	}
	if !seen["target"] {
		return nil, fmt.Errorf("%w: target is required", ErrInvalid)
	}
	if err := checkTrafficMode(p); err != nil {
		return nil, err
	}
	return p, nil
}

// checkTrafficMode refuses a traffic policy on a host-mode port: host
// ports only ever reach the node's own tasks.
func checkTrafficMode(p *PortConfig) error {
	if p.Traffic != "" && p.Mode != ModeIngress {
		return fmt.Errorf("%w: traffic=%s is only valid with mode=ingress (a mode=%s port always stays on its node)", ErrInvalid, p.Traffic, p.Mode)
	}
	return nil
}

func parsePort(what, s string) (uint32, error) {
	if strings.Contains(s, "-") {
		return 0, fmt.Errorf("%w: %s port %q: port ranges are not supported", ErrInvalid, what, s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%w: %s port %q: want a number from 1 to 65535", ErrInvalid, what, s)
	}
	return uint32(n), nil
}

func parseProtocol(s string) (string, error) {
	return parseChoice("protocol", s, ProtocolTCP, ProtocolUDP)
}

func parseMode(s string) (string, error) {
	return parseChoice("mode", s, ModeIngress, ModeHost)
}

func parseTraffic(s string) (string, error) {
	return parseChoice("traffic", s, TrafficCluster, TrafficLocal)
}

// parseChoice returns s lower-cased if it is one of choices.
func parseChoice(what, s string, choices ...string) (string, error) {
	if v := strings.ToLower(s); slices.Contains(choices, v) {
		return v, nil
	}
	return "", fmt.Errorf("%w: %s %q: want %s", ErrInvalid, what, s, strings.Join(choices, " or "))
}

// FormatPublish is p in the long form, which ParsePublish reads back.
func FormatPublish(p *PortConfig) string {
	var b strings.Builder
	if p.GetPublished() != 0 {
		fmt.Fprintf(&b, "published=%d,", p.GetPublished())
	}
	fmt.Fprintf(&b, "target=%d,protocol=%s,mode=%s", p.GetTarget(), p.GetProtocol(), p.GetMode())
	if p.GetTraffic() != "" {
		fmt.Fprintf(&b, ",traffic=%s", p.GetTraffic())
	}
	return b.String()
}

// NormalizePort returns a copy of a port from a spec with the defaults
// filled in (tcp, ingress) and the names lower-cased, or says what is
// wrong with it: the rules ParsePublish applies to what the user types,
// for ports that reach the managers by other ways.
func NormalizePort(p *PortConfig) (*PortConfig, error) {
	n := &PortConfig{Protocol: cmp.Or(p.GetProtocol(), ProtocolTCP), Target: p.GetTarget(), Published: p.GetPublished(),
		Mode: cmp.Or(p.GetMode(), ModeIngress), Traffic: p.GetTraffic()}
	var err error
	if n.Protocol, err = parseProtocol(n.Protocol); err != nil {
		return nil, err
	}
	if n.Mode, err = parseMode(n.Mode); err != nil {
		return nil, err
	}
	if n.Traffic != "" {
		if n.Traffic, err = parseTraffic(n.Traffic); err != nil {
			return nil, err
		}
	}
	if err := checkTrafficMode(n); err != nil {
		return nil, err
	}
	if n.Target == 0 {
		return nil, fmt.Errorf("%w: port %s: target port is required", ErrInvalid, FormatPublish(n))
	}
	if n.Target > maxPort || n.Published > maxPort {
		return nil, fmt.Errorf("%w: port %s: ports are 1-65535", ErrInvalid, FormatPublish(n))
	}
	return n, nil
}
