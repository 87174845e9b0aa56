package nfttest

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// A rule is a program over registers; nft prints it as the expressions
// the registers held when a statement used them. renderRule reads a rule
// the same way: each load puts a value (its nft text, and how to print
// data compared with it) into the registers, and each statement prints
// the values it uses.

// kind says how to print data that is compared with, or stored as, a value.
type kind int

const (
	kindHex kind = iota
	kindInteger
	kindNFProto
	kindL4Proto
	kindIPv4
	kindIPv6
	kindPort
	kindMark
	kindAddrType
	kindString
)

// value is what a register holds while a rule is read.
type value struct {
	text string
	len  uint32
	kind kind
	// binop: the value is an expression (a & b), so an equality test with
	// it is printed with ==, as nft does.
	binop bool
	// prefix: data compared with it is the first len bytes of an address,
	// printed as a prefix (ip daddr != 127.0.0.0/8).
	prefix bool
	used   *bool
}

type reader struct {
	t     *table
	regs  map[uint32]value // by 32-bit register, 0 to 15
	out   []string
	loads []value
}

// renderRule prints exprs as nft prints a rule.
func renderRule(t *table, exprs []expr.Any) (string, error) {
	r := &reader{t: t, regs: map[uint32]value{}}
	for _, e := range exprs {
		if err := r.expr(e); err != nil {
			return strings.Join(r.out, " "), err
		}
	}
	for _, v := range r.loads {
		if !*v.used {
			// Nothing a rule computes is hidden, used or not.
			r.out = append(r.out, "["+v.text+" unused]")
		}
	}
	return strings.Join(r.out, " "), nil
}

// slot is the 32-bit register a register number starts at: NFT_REG_1..4
// are 16 bytes each, NFT_REG32_00..15 four.
func slot(reg uint32) (uint32, error) {
	switch {
	case reg >= 1 && reg <= 4:
		return (reg - 1) * 4, nil
	case reg >= 8 && reg <= 23:
		return reg - 8, nil
	}
	return 0, fmt.Errorf("register %d: %w", reg, unix.EINVAL)
}

func words(n uint32) uint32 { return (n + 3) / 4 }

func (r *reader) load(reg uint32, v value) error {
	s, err := slot(reg)
	if err != nil {
		return err
	}
	if s+words(v.len) > 16 {
		return fmt.Errorf("%d bytes into register %d overflow the registers: %w", v.len, reg, unix.ERANGE)
	}
	v.used = new(bool)
	r.loads = append(r.loads, v)
	for i := range words(v.len) {
		delete(r.regs, s+i)
	}
	r.regs[s] = v
	return nil
}

// use reads n bytes from reg on: one value, or the concatenation of
// several (each padded to whole registers, as the kernel lays them out).
func (r *reader) use(reg, n uint32) (value, error) {
	s, err := slot(reg)
	if err != nil {
		return value{}, err
	}
	var parts []value
	for got := uint32(0); got < n; {
		v, ok := r.regs[s]
		if !ok {
			return value{}, fmt.Errorf("register %d read before it was loaded: %w", reg, unix.EINVAL)
		}
		*v.used = true
		parts = append(parts, v)
		got += words(v.len) * 4
		s += words(v.len)
	}
	if len(parts) == 1 {
		return parts[0], nil
	}
	texts := make([]string, len(parts))
	for i, p := range parts {
		texts[i] = p.text
	}
	return value{text: strings.Join(texts, " . "), len: n, kind: kindHex}, nil
}

func (r *reader) say(s string) { r.out = append(r.out, s) }

func (r *reader) expr(e expr.Any) error {
	switch e := e.(type) {
	case *expr.Meta:
		name, n, k := metaKey(e.Key)
		if e.SourceRegister {
			v, err := r.use(e.Register, n)
			if err != nil {
				return err
			}
			r.say(fmt.Sprintf("meta %s set %s", name, v.text))
			return nil
		}
		return r.load(e.Register, value{text: "meta " + name, len: n, kind: k})
	case *expr.Payload:
		if e.OperationType == expr.PayloadWrite {
			v, err := r.use(e.SourceRegister, e.Len)
			if err != nil {
				return err
			}
			r.say(fmt.Sprintf("%s set %s", payloadField(e.Base, e.Offset, e.Len).text, v.text))
			return nil
		}
		return r.load(e.DestRegister, payloadField(e.Base, e.Offset, e.Len))
	case *expr.Cmp:
		v, err := r.use(e.Register, uint32(len(e.Data)))
		if err != nil {
			return err
		}
		op := map[expr.CmpOp]string{expr.CmpOpNeq: "!= ", expr.CmpOpLt: "< ", expr.CmpOpLte: "<= ", expr.CmpOpGt: "> ", expr.CmpOpGte: ">= "}[e.Op]
		if op == "" && v.binop {
			op = "== "
		}
		data := format(v.kind, e.Data)
		if v.prefix {
			data = prefixText(v.kind, e.Data)
		}
		r.say(v.text + " " + op + data)
		return nil
	case *expr.Bitwise:
		v, err := r.use(e.SourceRegister, e.Len)
		if err != nil {
			return err
		}
		return r.load(e.DestRegister, value{text: bitwiseText(v, e), len: e.Len, kind: v.kind, binop: true})
	case *expr.Fib:
		return r.load(e.Register, fibValue(e))
	case *expr.Lookup:
		return r.lookup(e)
	case *expr.Numgen:
		text := "numgen random mod " + strconv.FormatUint(uint64(e.Modulus), 10)
		if e.Type == unix.NFT_NG_INCREMENTAL {
			text = "numgen inc mod " + strconv.FormatUint(uint64(e.Modulus), 10)
		}
		if e.Offset != 0 {
			text += " offset " + strconv.FormatUint(uint64(e.Offset), 10)
		}
		return r.load(e.Register, value{text: text, len: 4, kind: kindInteger})
	case *expr.Immediate:
		if e.Register == 0 {
			r.say("[immediate verdict " + hex.EncodeToString(e.Data) + "]")
			return nil
		}
		return r.load(e.Register, value{text: format(kindMark, e.Data), len: uint32(len(e.Data)), kind: kindHex})
	case *expr.NAT:
		return r.nat(e)
	case *expr.Masq:
		text := "masquerade"
		if e.ToPorts {
			v, err := r.use(e.RegProtoMin, 2)
			if err != nil {
				return err
			}
			text += " to :" + v.text
		}
		r.say(text + natFlags(e.Random, e.FullyRandom, e.Persistent))
		return nil
	case *expr.Reject:
		r.say(rejectText(e))
		return nil
	case *expr.Verdict:
		r.say(verdictText(e))
		return nil
	case *expr.Counter:
		r.say("counter")
		return nil
	}
	r.say(strings.Replace(fmt.Sprintf("[%T %+v]", e, e), "*expr.", "", 1))
	return nil
}

func (r *reader) lookup(e *expr.Lookup) error {
	s, err := r.t.lookup(e.SetName, e.SetID)
	if err != nil {
		return err
	}
	key, err := r.use(e.SourceRegister, s.spec.KeyType.Bytes)
	if err != nil {
		return err
	}
	ref := "@" + s.spec.Name
	if s.spec.Anonymous {
		ref = "{ " + s.inline() + " }"
	}
	switch {
	case e.IsDestRegSet && e.DestRegister == 0:
		r.say(key.text + " vmap " + ref)
		return nil
	case e.IsDestRegSet:
		return r.load(e.DestRegister, value{text: key.text + " map " + ref, len: s.spec.DataType.Bytes, kind: kindHex})
	case e.Invert:
		r.say(key.text + " != " + ref)
	default:
		r.say(key.text + " " + ref)
	}
	return nil
}

func (r *reader) nat(e *expr.NAT) error {
	text := map[expr.NATType]string{expr.NATTypeDestNAT: "dnat", expr.NATTypeSourceNAT: "snat"}[e.Type]
	switch e.Family {
	case unix.NFPROTO_IPV4:
		text += " ip"
	case unix.NFPROTO_IPV6:
		text += " ip6"
	}
	if e.RegAddrMin == 0 {
		r.say(text + natFlags(e.Random, e.FullyRandom, e.Persistent))
		return nil
	}
	addrSlot, err := slot(e.RegAddrMin)
	if err != nil {
		return err
	}
	addr, ok := r.regs[addrSlot]
	if !ok {
		return fmt.Errorf("nat address register %d read before it was loaded: %w", e.RegAddrMin, unix.EINVAL)
	}
	*addr.used = true
	to := addr.text
	if e.Specified && e.RegProtoMin != 0 {
		portSlot, err := slot(e.RegProtoMin)
		if err != nil {
			return err
		}
		if portSlot > addrSlot && portSlot < addrSlot+words(addr.len) {
			// One lookup filled both: a map to address . port.
			text += " addr . port"
		} else {
			port, err := r.use(e.RegProtoMin, 2)
			if err != nil {
				return err
			}
			to += ":" + port.text
		}
	}
	r.say(text + " to " + to + natFlags(e.Random, e.FullyRandom, e.Persistent))
	return nil
}

func natFlags(random, fullyRandom, persistent bool) string {
	var f []string
	if random {
		f = append(f, "random")
	}
	if fullyRandom {
		f = append(f, "fully-random")
	}
	if persistent {
		f = append(f, "persistent")
	}
	if len(f) == 0 {
		return ""
	}
	return " " + strings.Join(f, ",")
}

// metaKeys are the meta keys nft names, with their size and the kind of
// their values.
var metaKeys = map[expr.MetaKey]struct {
	name string
	len  uint32
	kind kind
}{
	expr.MetaKeyMARK:     {"mark", 4, kindMark},
	expr.MetaKeyNFPROTO:  {"nfproto", 1, kindNFProto},
	expr.MetaKeyL4PROTO:  {"l4proto", 1, kindL4Proto},
	expr.MetaKeyPROTOCOL: {"protocol", 2, kindHex},
	expr.MetaKeyIIF:      {"iif", 4, kindInteger},
	expr.MetaKeyOIF:      {"oif", 4, kindInteger},
	expr.MetaKeyIIFNAME:  {"iifname", 16, kindString},
	expr.MetaKeyOIFNAME:  {"oifname", 16, kindString},
	expr.MetaKeyPKTTYPE:  {"pkttype", 1, kindInteger},
}

func metaKey(k expr.MetaKey) (string, uint32, kind) {
	if m, ok := metaKeys[k]; ok {
		return m.name, m.len, m.kind
	}
	return fmt.Sprintf("key%d", k), 4, kindHex
}

// payloadField names the header field a payload load reads.
func payloadField(base expr.PayloadBase, off, n uint32) value {
	type field struct {
		base     expr.PayloadBase
		off, len uint32
	}
	known := map[field]value{
		{expr.PayloadBaseNetworkHeader, 12, 4}:  {text: "ip saddr", kind: kindIPv4},
		{expr.PayloadBaseNetworkHeader, 16, 4}:  {text: "ip daddr", kind: kindIPv4},
		{expr.PayloadBaseNetworkHeader, 8, 16}:  {text: "ip6 saddr", kind: kindIPv6},
		{expr.PayloadBaseNetworkHeader, 24, 16}: {text: "ip6 daddr", kind: kindIPv6},
		{expr.PayloadBaseTransportHeader, 0, 2}: {text: "th sport", kind: kindPort},
		{expr.PayloadBaseTransportHeader, 2, 2}: {text: "th dport", kind: kindPort},
	}
	if v, ok := known[field{base, off, n}]; ok {
		v.len = n
		return v
	}
	// The first bytes of an address: nft prints the comparison as a prefix.
	for f, v := range known {
		if f.base == base && f.off == off && n < f.len && (v.kind == kindIPv4 || v.kind == kindIPv6) {
			v.len, v.prefix = n, true
			return v
		}
	}
	name := map[expr.PayloadBase]string{
		expr.PayloadBaseLLHeader:        "@ll",
		expr.PayloadBaseNetworkHeader:   "@nh",
		expr.PayloadBaseTransportHeader: "@th",
	}[base]
	return value{text: fmt.Sprintf("%s,%d,%d", name, off*8, n*8), len: n, kind: kindHex}
}

func fibValue(e *expr.Fib) value {
	var flags []string
	for _, f := range []struct {
		on   bool
		name string
	}{{e.FlagSADDR, "saddr"}, {e.FlagDADDR, "daddr"}, {e.FlagMARK, "mark"}, {e.FlagIIF, "iif"}, {e.FlagOIF, "oif"}} {
		if f.on {
			flags = append(flags, f.name)
		}
	}
	result, k, n := "type", kindAddrType, uint32(4)
	switch {
	case e.ResultOIF:
		result, k = "oif", kindInteger
	case e.ResultOIFNAME:
		result, k, n = "oifname", kindString, 16
	}
	return value{text: "fib " + strings.Join(flags, " . ") + " " + result, len: n, kind: k}
}

func bitwiseText(v value, e *expr.Bitwise) string {
	if e.Len != 4 {
		return fmt.Sprintf("(%s & 0x%x) ^ 0x%x", v.text, e.Mask, e.Xor)
	}
	mask := binaryutil.NativeEndian.Uint32(e.Mask)
	xor := binaryutil.NativeEndian.Uint32(e.Xor)
	switch {
	case xor == 0:
		return fmt.Sprintf("%s & 0x%08x", v.text, mask)
	case mask == ^xor:
		return fmt.Sprintf("%s | 0x%08x", v.text, xor)
	}
	return fmt.Sprintf("(%s & 0x%08x) ^ 0x%08x", v.text, mask, xor)
}

func rejectText(e *expr.Reject) string {
	switch e.Type {
	case unix.NFT_REJECT_TCP_RST:
		return "reject with tcp reset"
	case unix.NFT_REJECT_ICMPX_UNREACH:
		codes := map[uint8]string{
			unix.NFT_REJECT_ICMPX_NO_ROUTE:         "no-route",
			unix.NFT_REJECT_ICMPX_PORT_UNREACH:     "port-unreachable",
			unix.NFT_REJECT_ICMPX_HOST_UNREACH:     "host-unreachable",
			unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED: "admin-prohibited",
		}
		if c, ok := codes[e.Code]; ok {
			return "reject with icmpx " + c
		}
		return fmt.Sprintf("reject with icmpx %d", e.Code)
	}
	return fmt.Sprintf("reject with icmp %d", e.Code)
}

func verdictText(v *expr.Verdict) string {
	if v == nil {
		return ""
	}
	switch v.Kind {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictContinue:
		return "continue"
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictGoto:
		return "goto " + v.Chain
	case expr.VerdictQueue:
		return "queue"
	case expr.VerdictBreak:
		return "break"
	}
	return fmt.Sprintf("verdict %d", v.Kind)
}

// format prints data as nft prints a value of kind k.
func format(k kind, data []byte) string {
	switch {
	case k == kindNFProto && len(data) == 1:
		switch data[0] {
		case unix.NFPROTO_IPV4:
			return "ipv4"
		case unix.NFPROTO_IPV6:
			return "ipv6"
		}
	case k == kindL4Proto && len(data) == 1:
		return protoName(data[0])
	case k == kindIPv4 && len(data) == 4, k == kindIPv6 && len(data) == 16:
		a, _ := netip.AddrFromSlice(data)
		return a.String()
	case k == kindPort && len(data) == 2:
		return strconv.Itoa(int(binary.BigEndian.Uint16(data)))
	case k == kindMark && len(data) == 4:
		return fmt.Sprintf("0x%08x", binaryutil.NativeEndian.Uint32(data))
	case k == kindInteger && len(data) == 4:
		return strconv.FormatUint(uint64(binaryutil.NativeEndian.Uint32(data)), 10)
	case k == kindAddrType && len(data) == 4:
		types := []string{"unspec", "unicast", "local", "broadcast", "anycast", "multicast", "blackhole", "unreachable", "prohibit"}
		if n := binaryutil.NativeEndian.Uint32(data); int(n) < len(types) {
			return types[n]
		}
	case k == kindString:
		return strconv.Quote(strings.TrimRight(string(data), "\x00"))
	}
	return "0x" + hex.EncodeToString(data)
}

// prefixText prints the first bytes of an address as the prefix they
// stand for.
func prefixText(k kind, data []byte) string {
	full := make([]byte, 4)
	if k == kindIPv6 {
		full = make([]byte, 16)
	}
	copy(full, data)
	a, _ := netip.AddrFromSlice(full)
	return netip.PrefixFrom(a, 8*len(data)).String()
}

func protoName(p byte) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP:
		return "icmp"
	case unix.IPPROTO_ICMPV6:
		return "ipv6-icmp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

func baseChainSpec(c *nftables.Chain) string {
	hooks := []string{"prerouting", "input", "forward", "output", "postrouting", "ingress"}
	hook := fmt.Sprintf("hook%d", *c.Hooknum)
	if int(*c.Hooknum) < len(hooks) {
		hook = hooks[*c.Hooknum]
	}
	prio := "0"
	if c.Priority != nil {
		prio = strconv.Itoa(int(*c.Priority))
		names := map[nftables.ChainPriority]string{-300: "raw", -150: "mangle", -100: "dstnat", 0: "filter", 50: "security", 100: "srcnat"}
		if n, ok := names[*c.Priority]; ok {
			prio = n
		}
	}
	policy := "accept"
	if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
		policy = "drop"
	}
	typ := c.Type
	if typ == "" {
		typ = nftables.ChainTypeFilter
	}
	return fmt.Sprintf("type %s hook %s priority %s; policy %s;", typ, hook, prio, policy)
}

// typeSpec is a set's type line: key type, and a map's data type.
func (s *set) typeSpec() string {
	if s.spec.IsMap {
		return s.spec.KeyType.Name + " : " + s.spec.DataType.Name
	}
	return s.spec.KeyType.Name
}

// keyText prints a key in the set's key type.
func (s *set) keyText(key []byte) string {
	return typedText(s.spec.KeyType, s.spec.KeyByteOrder, key)
}

// elementText prints an element as nft lists it: key, comment, and for a
// map what it maps to.
func (s *set) elementText(e element, withData bool) string {
	text := s.keyText(e.key)
	if e.comment != "" {
		text += " comment " + strconv.Quote(e.comment)
	}
	if !withData || !s.spec.IsMap {
		return text
	}
	if e.verdict != nil {
		return text + " : " + verdictText(e.verdict)
	}
	return text + " : " + typedText(s.spec.DataType, nil, e.val)
}

// elementsText prints vals as an nft command lists them.
func (s *set) elementsText(vals []nftables.SetElement, withData bool) string {
	texts := make([]string, len(vals))
	for i, v := range vals {
		texts[i] = s.elementText(element{key: v.Key, val: v.Val, verdict: v.VerdictData, comment: v.Comment}, withData)
	}
	return strings.Join(texts, ", ")
}

// inline prints an anonymous set's elements in the order they were given.
func (s *set) inline() string {
	texts := make([]string, 0, len(s.order))
	for _, k := range s.order {
		texts = append(texts, s.elementText(s.elems[k], true))
	}
	return strings.Join(texts, ", ")
}

// typedText splits data into the parts of t (each padded to 4 bytes when
// t is a concatenation) and prints each as its type.
func typedText(t nftables.SetDatatype, order binaryutil.ByteOrder, data []byte) string {
	parts := nftables.ConcatSetTypeElements(t)
	var texts []string
	for i, p := range parts {
		n := int(p.Bytes)
		if n == 0 || n > len(data) || (i == len(parts)-1 && len(parts) == 1) {
			n = len(data)
		}
		texts = append(texts, datatypeText(p.Name, order, data[:n]))
		data = data[n:]
		if len(parts) > 1 {
			data = data[min(len(data), int(words(uint32(n))*4)-n):]
		}
	}
	if len(data) > 0 {
		texts = append(texts, "0x"+hex.EncodeToString(data))
	}
	return strings.Join(slices.DeleteFunc(texts, func(s string) bool { return s == "" }), " . ")
}

func datatypeText(name string, order binaryutil.ByteOrder, b []byte) string {
	switch name {
	case "ipv4_addr":
		return format(kindIPv4, b)
	case "ipv6_addr":
		return format(kindIPv6, b)
	case "inet_proto":
		return format(kindL4Proto, b)
	case "inet_service":
		return format(kindPort, b)
	case "mark":
		return format(kindMark, b)
	case "integer":
		if len(b) == 4 {
			if order == nil {
				order = binaryutil.BigEndian
			}
			return strconv.FormatUint(uint64(order.Uint32(b)), 10)
		}
	}
	return "0x" + hex.EncodeToString(b)
}
