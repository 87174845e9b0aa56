package allocator

import (
	"fmt"
	"strconv"
	"strings"
)

// ParsePublish parses a --publish value in Docker's short form
// ("8080:80", "8080:80/udp", "80", "80/udp") or long form
// ("published=8080,target=80,protocol=udp,mode=host",
// "target=80,traffic=local"). The result is normalised: protocol and mode
// are always set; traffic only when given (it is only valid in ingress
// mode).
func ParsePublish(s string) (PortConfig, error) {
	var (
		p   PortConfig
		err error
	)
	if strings.Contains(s, "=") {
		p, err = parseLong(s)
	} else {
		p, err = parseShort(s)
	}
	if err != nil {
		return PortConfig{}, fmt.Errorf("publish %q: %w", s, err)
	}
	return p, nil
}

func parseShort(s string) (PortConfig, error) {
	p := PortConfig{Protocol: ProtocolTCP, Mode: ModeIngress}
	ports, proto, hasProto := strings.Cut(s, "/")
	if hasProto {
		var err error
		if p.Protocol, err = parseProtocol(proto); err != nil {
			return PortConfig{}, err
		}
	}
	parts := strings.Split(ports, ":")
	switch len(parts) {
	case 1:
		t, err := parsePort("target", parts[0])
		if err != nil {
			return PortConfig{}, err
		}
		p.Target = t
	case 2:
		pub, err := parsePort("published", parts[0])
		if err != nil {
			return PortConfig{}, err
		}
		t, err := parsePort("target", parts[1])
		if err != nil {
			return PortConfig{}, err
		}
		p.Published, p.Target = pub, t
	default:
		return PortConfig{}, fmt.Errorf("%w: want [PUBLISHED:]TARGET[/PROTOCOL]; publishing on one host address is not supported", ErrInvalid)
	}
	return p, nil
}

func parseLong(s string) (PortConfig, error) {
	p := PortConfig{Protocol: ProtocolTCP, Mode: ModeIngress}
	seen := map[string]bool{}
	for field := range strings.SplitSeq(s, ",") {
		key, val, ok := strings.Cut(field, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		val = strings.TrimSpace(val)
		if !ok {
			return PortConfig{}, fmt.Errorf("%w: field %q is not KEY=VALUE", ErrInvalid, field)
		}
		if seen[key] {
			return PortConfig{}, fmt.Errorf("%w: %s given twice", ErrInvalid, key)
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
			return PortConfig{}, err
		}
	}
	if !seen["target"] {
		return PortConfig{}, fmt.Errorf("%w: target is required", ErrInvalid)
	}
	if err := checkTrafficMode(p); err != nil {
		return PortConfig{}, err
	}
	return p, nil
}

func parseTraffic(s string) (string, error) {
	switch t := strings.ToLower(s); t {
	case TrafficCluster, TrafficLocal:
		return t, nil
	default:
		return "", fmt.Errorf("%w: traffic %q: want cluster or local", ErrInvalid, s)
	}
}

// checkTrafficMode refuses a traffic policy on a host-mode port: host
// ports only ever reach the node's own tasks.
func checkTrafficMode(p PortConfig) error {
	if p.Traffic != "" && p.Mode != ModeIngress {
		return fmt.Errorf("%w: traffic=%s is only valid with mode=ingress (a mode=%s port always stays on its node)", ErrInvalid, p.Traffic, p.Mode)
	}
	return nil
}

func parsePort(what, s string) (uint16, error) {
	if strings.Contains(s, "-") {
		return 0, fmt.Errorf("%w: %s port %q: port ranges are not supported", ErrInvalid, what, s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%w: %s port %q: want a number from 1 to 65535", ErrInvalid, what, s)
	}
	return uint16(n), nil
}

func parseProtocol(s string) (string, error) {
	switch p := strings.ToLower(s); p {
	case ProtocolTCP, ProtocolUDP:
		return p, nil
	default:
		return "", fmt.Errorf("%w: protocol %q: want tcp or udp", ErrInvalid, s)
	}
}

func parseMode(s string) (string, error) {
	switch m := strings.ToLower(s); m {
	case ModeIngress, ModeHost:
		return m, nil
	default:
		return "", fmt.Errorf("%w: mode %q: want ingress or host", ErrInvalid, s)
	}
}

// String is the long form, which ParsePublish reads back.
func (p PortConfig) String() string {
	var b strings.Builder
	if p.Published != 0 {
		fmt.Fprintf(&b, "published=%d,", p.Published)
	}
	fmt.Fprintf(&b, "target=%d,protocol=%s,mode=%s", p.Target, p.Protocol, p.Mode)
	if p.Traffic != "" {
		fmt.Fprintf(&b, ",traffic=%s", p.Traffic)
	}
	return b.String()
}

// normalized fills in defaults and checks a port from a ServiceNeeds.
func (p PortConfig) normalized() (PortConfig, error) {
	var err error
	if p.Protocol == "" {
		p.Protocol = ProtocolTCP
	}
	if p.Mode == "" {
		p.Mode = ModeIngress
	}
	if p.Protocol, err = parseProtocol(p.Protocol); err != nil {
		return PortConfig{}, err
	}
	if p.Mode, err = parseMode(p.Mode); err != nil {
		return PortConfig{}, err
	}
	if p.Traffic != "" {
		if p.Traffic, err = parseTraffic(p.Traffic); err != nil {
			return PortConfig{}, err
		}
	}
	if err := checkTrafficMode(p); err != nil {
		return PortConfig{}, err
	}
	if p.Target == 0 {
		return PortConfig{}, fmt.Errorf("%w: port %s: target port is required", ErrInvalid, p)
	}
	return p, nil
}
