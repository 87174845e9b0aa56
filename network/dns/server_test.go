package dns

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

// queryTimeout bounds one test query; queries go over loopback, so it only
// keeps a broken server from stalling the suite.
const queryTimeout = 2 * time.Second

// names is a Lookup over a fixed table that records what it was asked.
type names struct {
	table map[string][]netip.Addr
	mu    sync.Mutex
	asked []asked
}

type asked struct {
	src  netip.Addr
	name string
}

func (n *names) lookup(src netip.Addr, name string) ([]netip.Addr, bool) {
	n.mu.Lock()
	n.asked = append(n.asked, asked{src, name})
	n.mu.Unlock()
	addrs, ok := n.table[name]
	return addrs, ok
}

func (n *names) lastAsked(t *testing.T) asked {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.asked) == 0 {
		t.Fatal("Lookup was never called")
	}
	return n.asked[len(n.asked)-1]
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// loopback listens on addrs, answering all of 127.0.0.0/8 (the tests'
// clients).
func loopback(addrs ...netip.Addr) []netip.Prefix {
	out := make([]netip.Prefix, len(addrs))
	for i, a := range addrs {
		out[i] = netip.PrefixFrom(a, 8)
	}
	return out
}

var (
	lo1 = netip.MustParseAddr("127.0.0.1")
	lo2 = netip.MustParseAddr("127.0.0.2")
	lo3 = netip.MustParseAddr("127.0.0.3")
)

// freePort finds a port that is free for UDP and TCP on 127.0.0.1-3, the
// addresses these tests listen on.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		pc.Close()
		free := true
		for _, a := range []netip.Addr{lo1, lo2, lo3} {
			ap := netip.AddrPortFrom(a, uint16(port)).String()
			pc, err := net.ListenPacket("udp", ap)
			if err != nil {
				free = false
				break
			}
			pc.Close()
			ln, err := net.Listen("tcp", ap)
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			return port
		}
	}
	t.Fatal("no port free on 127.0.0.1-3")
	return 0
}

// startServer runs a resolver for table on 127.0.0.1 and returns it with
// its address.
func startServer(t *testing.T, n *names, upstreams []string) (*Server, string) {
	t.Helper()
	if upstreams == nil {
		upstreams = []string{}
	}
	port := freePort(t)
	s, err := NewServer(Config{Port: port, Upstreams: upstreams, Lookup: n.lookup, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.SetAddrs(loopback(lo1)); err != nil {
		t.Fatal(err)
	}
	return s, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func query(t *testing.T, network, server, name string, qtype uint16) *miekg.Msg {
	t.Helper()
	resp, err := exchange(network, server, name, qtype)
	if err != nil {
		t.Fatalf("%s query %s %s at %s: %v", network, name, miekg.TypeToString[qtype], server, err)
	}
	return resp
}

func exchange(network, server, name string, qtype uint16) (*miekg.Msg, error) {
	c := &miekg.Client{Net: network, Timeout: queryTimeout}
	m := new(miekg.Msg)
	m.SetQuestion(name, qtype)
	resp, _, err := c.Exchange(m, server)
	return resp, err
}

// answerAddrs are the addresses of the A and AAAA records of m, in order.
func answerAddrs(t *testing.T, m *miekg.Msg) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, rr := range m.Answer {
		var ip net.IP
		switch rr := rr.(type) {
		case *miekg.A:
			ip = rr.A
		case *miekg.AAAA:
			ip = rr.AAAA
		default:
			t.Fatalf("unexpected record %v", rr)
		}
		a, _ := netip.AddrFromSlice(ip)
		out = append(out, a.Unmap())
		if rr.Header().Ttl != answerTTL {
			t.Errorf("%v: TTL %d, want %d", rr, rr.Header().Ttl, answerTTL)
		}
	}
	return out
}

func sorted(a []netip.Addr) []netip.Addr {
	a = slices.Clone(a)
	slices.SortFunc(a, netip.Addr.Compare)
	return a
}

func TestClusterAnswers(t *testing.T) {
	n := &names{table: map[string][]netip.Addr{
		"web":         addrs("10.0.0.2"),
		"tasks.web":   addrs("10.0.0.5", "10.0.0.6", "10.0.0.7"),
		"tasks.empty": nil,
		"dual":        addrs("10.0.0.9", "fd00::9"),
		"mapped":      addrs("::ffff:10.0.0.10"),
	}}
	_, server := startServer(t, n, nil)
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		want  []netip.Addr
	}{
		{"web.", miekg.TypeA, miekg.RcodeSuccess, addrs("10.0.0.2")},
		{"tasks.web.", miekg.TypeA, miekg.RcodeSuccess, addrs("10.0.0.5", "10.0.0.6", "10.0.0.7")},
		{"web.", miekg.TypeAAAA, miekg.RcodeSuccess, nil},
		{"tasks.empty.", miekg.TypeA, miekg.RcodeNameError, nil},
		{"tasks.empty.", miekg.TypeAAAA, miekg.RcodeNameError, nil},
		{"dual.", miekg.TypeA, miekg.RcodeSuccess, addrs("10.0.0.9")},
		{"dual.", miekg.TypeAAAA, miekg.RcodeSuccess, addrs("fd00::9")},
		{"mapped.", miekg.TypeA, miekg.RcodeSuccess, addrs("10.0.0.10")},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(network+"/"+tc.name+miekg.TypeToString[tc.qtype], func(t *testing.T) {
				resp := query(t, network, server, tc.name, tc.qtype)
				if resp.Rcode != tc.rcode {
					t.Errorf("rcode %s, want %s", miekg.RcodeToString[resp.Rcode], miekg.RcodeToString[tc.rcode])
				}
				if !resp.Authoritative {
					t.Error("cluster answer is not authoritative")
				}
				if got := sorted(answerAddrs(t, resp)); !slices.Equal(got, tc.want) {
					t.Errorf("answer %v, want %v", got, tc.want)
				}
				for _, rr := range resp.Answer {
					if rr.Header().Name != tc.name {
						t.Errorf("record name %q, want %q", rr.Header().Name, tc.name)
					}
				}
			})
		}
	}
}

func TestClusterAnswerOrderRotates(t *testing.T) {
	n := &names{table: map[string][]netip.Addr{"tasks.web": addrs("10.0.0.5", "10.0.0.6", "10.0.0.7")}}
	_, server := startServer(t, n, nil)
	firsts := map[netip.Addr]int{}
	// Shuffled three ways, 30 answers all starting alike has odds of 3^-29.
	for range 30 {
		got := answerAddrs(t, query(t, "udp", server, "tasks.web.", miekg.TypeA))
		if len(got) != 3 {
			t.Fatalf("answer %v, want 3 records", got)
		}
		firsts[got[0]]++
	}
	if len(firsts) < 2 {
		t.Errorf("every answer started with the same record: %v", firsts)
	}
	if got := n.table["tasks.web"]; !slices.Equal(got, addrs("10.0.0.5", "10.0.0.6", "10.0.0.7")) {
		t.Errorf("the server reordered the Lookup's slice: %v", got)
	}
}

func TestNamesAreCaseInsensitive(t *testing.T) {
	n := &names{table: map[string][]netip.Addr{"web.prod": addrs("10.0.0.2")}}
	_, server := startServer(t, n, nil)
	resp := query(t, "udp", server, "WeB.Prod.", miekg.TypeA)
	if got := answerAddrs(t, resp); !slices.Equal(got, addrs("10.0.0.2")) {
		t.Errorf("answer %v, want 10.0.0.2", got)
	}
	if got := n.lastAsked(t).name; got != "web.prod" {
		t.Errorf("Lookup asked for %q, want %q", got, "web.prod")
	}
	if resp.Answer[0].Header().Name != "WeB.Prod." {
		t.Errorf("record name %q, want the name as asked", resp.Answer[0].Header().Name)
	}
}

func TestTruncatesLargeUDPAnswers(t *testing.T) {
	var many []netip.Addr
	for i := range 100 {
		many = append(many, netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}))
	}
	n := &names{table: map[string][]netip.Addr{"tasks.big": many}}
	_, server := startServer(t, n, nil)

	udp := query(t, "udp", server, "tasks.big.", miekg.TypeA)
	if !udp.Truncated || len(udp.Answer) >= 100 {
		t.Errorf("UDP answer without EDNS: truncated=%v with %d records, want truncated with fewer than 100", udp.Truncated, len(udp.Answer))
	}
	udp.Compress = true // as sent
	if l := udp.Len(); l > miekg.MinMsgSize {
		t.Errorf("UDP answer without EDNS is %d bytes, more than %d", l, miekg.MinMsgSize)
	}

	tcp := query(t, "tcp", server, "tasks.big.", miekg.TypeA)
	if tcp.Truncated || len(tcp.Answer) != 100 {
		t.Errorf("TCP answer: truncated=%v with %d records, want all 100", tcp.Truncated, len(tcp.Answer))
	}

}

// ednsExchange asks server over UDP with an EDNS record claiming size.
func ednsExchange(t *testing.T, server, name string, size uint16) *miekg.Msg {
	t.Helper()
	c := &miekg.Client{Net: "udp", Timeout: queryTimeout, UDPSize: size}
	m := new(miekg.Msg).SetQuestion(name, miekg.TypeA)
	m.SetEdns0(size, false)
	resp, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("UDP query %s with EDNS %d: %v", name, size, err)
	}
	if resp.IsEdns0() == nil {
		t.Errorf("EDNS query %s answered without OPT record", name)
	}
	return resp
}

// TestEDNSSizeIsCapped: a client's EDNS size is honoured up to
// ednsUDPSize (1232) and no further, for the resolver's own answers and
// forwarded ones, so a small query never makes the node send a large,
// fragmented UDP answer; the whole answer is there over TCP.
func TestEDNSSizeIsCapped(t *testing.T) {
	var many []netip.Addr
	for i := range 100 { // 100 A records: about 1,650 bytes
		many = append(many, netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}))
	}
	up := startUpstream(t)
	n := &names{table: map[string][]netip.Addr{"tasks.big": many, "tasks.small": many[:20]}}
	_, server := startServer(t, n, []string{up.addr})

	for _, name := range []string{"tasks.big.", "big.example."} {
		for _, size := range []uint16{4096, 65535} {
			resp := ednsExchange(t, server, name, size)
			resp.Compress = true // as sent
			if !resp.Truncated || len(resp.Answer) >= 100 || resp.Len() > ednsUDPSize {
				t.Errorf("%s with EDNS %d: %d bytes, truncated=%v with %d records; want at most %d bytes, truncated",
					name, size, resp.Len(), resp.Truncated, len(resp.Answer), ednsUDPSize)
			}
		}
	}
	// Below the cap the client's size holds.
	resp := ednsExchange(t, server, "tasks.big.", 800)
	if resp.Compress = true; !resp.Truncated || resp.Len() > 800 {
		t.Errorf("tasks.big. with EDNS 800: %d bytes, truncated=%v; want at most 800, truncated", resp.Len(), resp.Truncated)
	}
	if resp := ednsExchange(t, server, "tasks.small.", 4096); resp.Truncated || len(resp.Answer) != 20 {
		t.Errorf("tasks.small. with EDNS 4096: truncated=%v with %d records, want all 20", resp.Truncated, len(resp.Answer))
	}
	// The upstream is asked for no more than the client will get.
	for _, size := range up.ednsSizes() {
		if size > ednsUDPSize {
			t.Errorf("upstream asked with EDNS size %d, more than %d", size, ednsUDPSize)
		}
	}
	if tcp := query(t, "tcp", server, "big.example.", miekg.TypeA); tcp.Truncated || len(tcp.Answer) != 100 {
		t.Errorf("big.example. over TCP: truncated=%v with %d records, want all 100", tcp.Truncated, len(tcp.Answer))
	}
}

// upstream is a resolver on 127.0.0.1 that knows example.org and records
// over which transport it was asked.
type upstream struct {
	addr  string
	mu    sync.Mutex
	nets  []string
	sizes []uint16 // the EDNS sizes of the queries that had one
}

func (u *upstream) ednsSizes() []uint16 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.sizes)
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	ln, err := net.Listen("tcp", u.addr)
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	handler := func(network string) miekg.HandlerFunc {
		return func(w miekg.ResponseWriter, req *miekg.Msg) {
			u.mu.Lock()
			u.nets = append(u.nets, network)
			if opt := req.IsEdns0(); opt != nil {
				u.sizes = append(u.sizes, opt.UDPSize())
			}
			u.mu.Unlock()
			m := new(miekg.Msg).SetReply(req)
			q := req.Question[0]
			switch {
			case q.Name == "example.org." && q.Qtype == miekg.TypeA:
				m.Answer = append(m.Answer, &miekg.A{
					Hdr: miekg.RR_Header{Name: q.Name, Rrtype: miekg.TypeA, Class: miekg.ClassINET, Ttl: 300},
					A:   net.IPv4(192, 0, 2, 1),
				})
			case q.Name == "big.example." && q.Qtype == miekg.TypeA:
				for i := range 100 {
					m.Answer = append(m.Answer, &miekg.A{
						Hdr: miekg.RR_Header{Name: q.Name, Rrtype: miekg.TypeA, Class: miekg.ClassINET, Ttl: 300},
						A:   net.IPv4(192, 0, 2, byte(i)),
					})
				}
				if opt := req.IsEdns0(); opt != nil {
					m.SetEdns0(opt.UDPSize(), false)
				}
				if network == "udp" {
					m.Truncate(udpSizeOf(req))
				}
			case q.Name == "web." && q.Qtype == miekg.TypeMX:
				m.Rcode = miekg.RcodeNameError
			case q.Name == "broken.example.":
				m.Rcode = miekg.RcodeServerFailure
			default:
				m.Rcode = miekg.RcodeNameError
			}
			w.WriteMsg(m)
		}
	}
	for _, srv := range []*miekg.Server{
		{PacketConn: pc, Handler: handler("udp")},
		{Listener: ln, Handler: handler("tcp")},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

// udpSizeOf is what an ordinary resolver sends a client: as much as its
// EDNS record says.
func udpSizeOf(req *miekg.Msg) int {
	if opt := req.IsEdns0(); opt != nil {
		return max(int(opt.UDPSize()), miekg.MinMsgSize)
	}
	return miekg.MinMsgSize
}

func (u *upstream) askedOver() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.nets)
}

// deadUpstream is a 127.0.0.1 port nothing listens on.
func deadUpstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func TestForwardsOtherNamesUpstream(t *testing.T) {
	up := startUpstream(t)
	n := &names{table: map[string][]netip.Addr{"web": addrs("10.0.0.2")}}
	_, server := startServer(t, n, []string{up.addr})
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			before := len(up.askedOver())
			resp := query(t, network, server, "example.org.", miekg.TypeA)
			if resp.Rcode != miekg.RcodeSuccess {
				t.Errorf("rcode %s, want NOERROR", miekg.RcodeToString[resp.Rcode])
			}
			if len(resp.Answer) != 1 || resp.Answer[0].(*miekg.A).A.String() != "192.0.2.1" {
				t.Errorf("answer %v, want the upstream's 192.0.2.1", resp.Answer)
			}
			// A cluster name with a type the resolver does not answer goes
			// upstream too.
			if resp := query(t, network, server, "web.", miekg.TypeMX); resp.Rcode != miekg.RcodeNameError {
				t.Errorf("MX web.: rcode %s, want the upstream's NXDOMAIN", miekg.RcodeToString[resp.Rcode])
			}
			got := up.askedOver()[before:]
			if want := []string{network, network}; !slices.Equal(got, want) {
				t.Errorf("upstream asked over %v, want %v", got, want)
			}
		})
	}
}

func TestForwardTriesNextUpstream(t *testing.T) {
	up := startUpstream(t)
	second := startUpstream(t)
	n := &names{table: map[string][]netip.Addr{}}
	_, server := startServer(t, n, []string{deadUpstream(t), up.addr, second.addr})
	for _, network := range []string{"udp", "tcp"} {
		resp := query(t, network, server, "example.org.", miekg.TypeA)
		if resp.Rcode != miekg.RcodeSuccess || len(resp.Answer) != 1 {
			t.Errorf("%s: rcode %s with %d records, want the live upstream's answer", network, miekg.RcodeToString[resp.Rcode], len(resp.Answer))
		}
	}
	// An upstream answering SERVFAIL is passed over for the next; with
	// none better its answer stands.
	resp := query(t, "udp", server, "broken.example.", miekg.TypeA)
	if resp.Rcode != miekg.RcodeServerFailure {
		t.Errorf("broken.example.: rcode %s, want SERVFAIL", miekg.RcodeToString[resp.Rcode])
	}
	if got := second.askedOver(); len(got) != 1 {
		t.Errorf("second upstream asked %d times, want once (for broken.example.)", len(got))
	}
}

func TestServfailWhenUpstreamsAreDead(t *testing.T) {
	n := &names{table: map[string][]netip.Addr{"web": addrs("10.0.0.2")}}
	_, server := startServer(t, n, []string{deadUpstream(t)})
	for _, network := range []string{"udp", "tcp"} {
		resp := query(t, network, server, "example.org.", miekg.TypeA)
		if resp.Rcode != miekg.RcodeServerFailure {
			t.Errorf("%s: rcode %s, want SERVFAIL", network, miekg.RcodeToString[resp.Rcode])
		}
		// Cluster names do not depend on the upstreams.
		if resp := query(t, network, server, "web.", miekg.TypeA); resp.Rcode != miekg.RcodeSuccess {
			t.Errorf("%s web.: rcode %s, want NOERROR", network, miekg.RcodeToString[resp.Rcode])
		}
	}
}

func TestLookupGetsTheSourceAddress(t *testing.T) {
	n := &names{table: map[string][]netip.Addr{"web": addrs("10.0.0.2")}}
	_, server := startServer(t, n, nil)
	for _, tc := range []struct {
		network string
		local   net.Addr
	}{
		{"udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 5)}},
		{"tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 6)}},
	} {
		c := &miekg.Client{Net: tc.network, Timeout: queryTimeout, Dialer: &net.Dialer{LocalAddr: tc.local}}
		if _, _, err := c.Exchange(new(miekg.Msg).SetQuestion("web.", miekg.TypeA), server); err != nil {
			t.Fatalf("%s from %s: %v", tc.network, tc.local, err)
		}
		want, _ := netip.AddrFromSlice(net.ParseIP(tc.local.String()[:len("127.0.0.x")]).To4())
		if got := n.lastAsked(t).src; got != want {
			t.Errorf("%s: Lookup got source %s, want %s", tc.network, got, want)
		}
	}
}

// TestRefusesSourcesOutsideTheSubnet: a listener answers the hosts of its
// gateway's subnet only; anyone else (the underlay, routed to the gateway
// address through the node) gets REFUSED, over UDP and TCP, for cluster
// names and forwarded ones alike, and neither Lookup nor an upstream is
// asked.
func TestRefusesSourcesOutsideTheSubnet(t *testing.T) {
	up := startUpstream(t)
	n := &names{table: map[string][]netip.Addr{"web": addrs("10.0.0.2")}}
	port := freePort(t)
	s, err := NewServer(Config{Port: port, Upstreams: []string{up.addr}, Lookup: n.lookup, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// 127.0.0.1 serves 127.0.0.0/30: 127.0.0.1-3 are its tasks, 127.0.0.5
	// is not.
	if err := s.SetAddrs([]netip.Prefix{netip.MustParsePrefix("127.0.0.1/30")}); err != nil {
		t.Fatal(err)
	}
	server := netip.AddrPortFrom(lo1, uint16(port)).String()
	ask := func(network, from, name string) *miekg.Msg {
		t.Helper()
		local := net.ParseIP(from)
		c := &miekg.Client{Net: network, Timeout: queryTimeout, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: local}}}
		if network == "tcp" {
			c.Dialer.LocalAddr = &net.TCPAddr{IP: local}
		}
		resp, _, err := c.Exchange(new(miekg.Msg).SetQuestion(name, miekg.TypeA), server)
		if err != nil {
			t.Fatalf("%s query %s from %s: %v", network, name, from, err)
		}
		return resp
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"web.", "example.org."} {
			if resp := ask(network, "127.0.0.2", name); resp.Rcode != miekg.RcodeSuccess || len(resp.Answer) != 1 {
				t.Errorf("%s %s from a task (127.0.0.2): rcode %s with %d records, want an answer", network, name, miekg.RcodeToString[resp.Rcode], len(resp.Answer))
			}
		}
	}
	n.mu.Lock()
	n.asked = nil
	n.mu.Unlock()
	forwarded := len(up.askedOver())
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"web.", "example.org."} {
			resp := ask(network, "127.0.0.5", name)
			if resp.Rcode != miekg.RcodeRefused || len(resp.Answer) != 0 {
				t.Errorf("%s %s from outside the subnet (127.0.0.5): rcode %s with %d records, want REFUSED and nothing", network, name, miekg.RcodeToString[resp.Rcode], len(resp.Answer))
			}
		}
	}
	if len(n.asked) != 0 {
		t.Errorf("Lookup asked %v for queries from outside the subnet", n.asked)
	}
	if got := up.askedOver()[forwarded:]; len(got) != 0 {
		t.Errorf("queries from outside the subnet forwarded upstream over %v", got)
	}
}

func TestSetAddrsRefusesBadGateways(t *testing.T) {
	s, err := NewServer(Config{Port: freePort(t), Upstreams: []string{}, Lookup: (&names{}).lookup, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, gws := range [][]netip.Prefix{
		{{}},
		{netip.MustParsePrefix("127.0.0.1/8"), netip.MustParsePrefix("127.0.0.1/24")},
	} {
		if err := s.SetAddrs(gws); err == nil {
			t.Errorf("SetAddrs(%v) succeeded", gws)
		}
	}
}

func TestSetAddrs(t *testing.T) {
	n := &names{table: map[string][]netip.Addr{"web": addrs("10.0.0.2")}}
	port := freePort(t)
	s, err := NewServer(Config{Port: port, Upstreams: []string{}, Lookup: n.lookup, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at := func(a netip.Addr) string { return netip.AddrPortFrom(a, uint16(port)).String() }
	check := func(step string, listening ...netip.Addr) {
		t.Helper()
		for _, a := range []netip.Addr{lo1, lo2, lo3} {
			for _, network := range []string{"udp", "tcp"} {
				resp, err := exchange(network, at(a), "web.", miekg.TypeA)
				want := slices.Contains(listening, a)
				switch {
				case want && err != nil:
					t.Errorf("%s: %s on %s: %v", step, network, a, err)
				case want && len(resp.Answer) != 1:
					t.Errorf("%s: %s on %s: answer %v", step, network, a, resp.Answer)
				case !want && err == nil:
					t.Errorf("%s: %s on %s answered, want nothing listening", step, network, a)
				}
			}
		}
	}
	steps := []struct {
		name  string
		addrs []netip.Addr
	}{
		{"first", []netip.Addr{lo2}},
		{"add", []netip.Addr{lo2, lo3}},
		{"same again", []netip.Addr{lo3, lo2, lo2}},
		{"remove", []netip.Addr{lo3}},
		{"swap", []netip.Addr{lo1, lo2}},
		{"none", nil},
	}
	for _, st := range steps {
		if err := s.SetAddrs(loopback(st.addrs...)); err != nil {
			t.Fatalf("%s: SetAddrs(%v): %v", st.name, st.addrs, err)
		}
		check(st.name, st.addrs...)
	}
}

func TestSetAddrsReportsBindFailure(t *testing.T) {
	port := freePort(t)
	// A plain socket without SO_REUSEADDR holds 127.0.0.2's TCP port.
	busy, err := net.Listen("tcp", netip.AddrPortFrom(lo2, uint16(port)).String())
	if err != nil {
		t.Fatal(err)
	}
	n := &names{table: map[string][]netip.Addr{"web": addrs("10.0.0.2")}}
	s, err := NewServer(Config{Port: port, Upstreams: []string{}, Lookup: n.lookup, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SetAddrs(loopback(lo2, lo3)); err == nil {
		t.Fatal("SetAddrs with 127.0.0.2's port taken succeeded")
	}
	if _, err := exchange("udp", netip.AddrPortFrom(lo3, uint16(port)).String(), "web.", miekg.TypeA); err != nil {
		t.Errorf("127.0.0.3 not served after 127.0.0.2 failed: %v", err)
	}
	busy.Close()
	if err := s.SetAddrs(loopback(lo2, lo3)); err != nil {
		t.Fatalf("SetAddrs once the port is free: %v", err)
	}
	if _, err := exchange("tcp", netip.AddrPortFrom(lo2, uint16(port)).String(), "web.", miekg.TypeA); err != nil {
		t.Errorf("127.0.0.2 not served after retry: %v", err)
	}
}

func TestClose(t *testing.T) {
	n := &names{table: map[string][]netip.Addr{"web": addrs("10.0.0.2")}}
	s, server := startServer(t, n, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := exchange("tcp", server, "web.", miekg.TypeA); err == nil {
		t.Error("closed server still answers")
	}
	if err := s.SetAddrs(loopback(lo1)); err == nil {
		t.Error("SetAddrs on a closed server succeeded")
	}
}

func TestNewServerRejectsBadConfig(t *testing.T) {
	lookup := (&names{}).lookup
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no lookup", Config{Upstreams: []string{}}},
		{"port out of range", Config{Port: 70000, Upstreams: []string{}, Lookup: lookup}},
		{"upstream without port", Config{Upstreams: []string{"192.0.2.1"}, Lookup: lookup}},
		{"upstream not an address", Config{Upstreams: []string{"dns.example:53"}, Lookup: lookup}},
	} {
		if _, err := NewServer(tc.cfg); err == nil {
			t.Errorf("%s: NewServer succeeded", tc.name)
		}
	}
}

func TestResolvConfUpstreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	conf := "# generated\nsearch example.com\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver fe80::1%eth0\noptions ndots:2\n"
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := resolvConfUpstreams(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.53:53", "[2001:db8::53]:53", "[fe80::1%eth0]:53"}
	if !slices.Equal(got, want) {
		t.Errorf("upstreams %q, want %q", got, want)
	}
	if _, err := resolvConfUpstreams(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing resolv.conf: err %v, want not exist", err)
	}
}

// FuzzAnswer feeds arbitrary queries, from arbitrary sources, to the
// answering logic: whatever arrives, the resolver answers without
// panicking, with the query's ID; a source outside the listener's subnet
// gets REFUSED with no records and is neither looked up nor forwarded; and
// no UDP answer is longer than ednsUDPSize, whatever EDNS size the query
// claims.
func FuzzAnswer(f *testing.F) {
	for _, q := range []*miekg.Msg{
		new(miekg.Msg).SetQuestion("web.", miekg.TypeA),
		new(miekg.Msg).SetQuestion("tasks.web.", miekg.TypeAAAA),
		new(miekg.Msg).SetQuestion("tasks.big.", miekg.TypeA).SetEdns0(65535, false),
		new(miekg.Msg).SetQuestion("example.org.", miekg.TypeMX),
	} {
		b, err := q.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, []byte{10, 0, 1, 5}, false)
		f.Add(b, []byte{192, 168, 1, 5}, false)
		f.Add(b, []byte{10, 0, 2, 5}, true)
	}
	var many []netip.Addr
	for i := range 200 {
		many = append(many, netip.AddrFrom4([4]byte{10, 1, byte(i / 256), byte(i)}))
	}
	n := &names{table: map[string][]netip.Addr{"web": addrs("10.0.0.2", "fd00::2"), "tasks.web": nil, "tasks.big": many}}
	s, err := NewServer(Config{Upstreams: []string{}, Lookup: n.lookup, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	clients := netip.MustParsePrefix("10.0.1.0/24")
	f.Fuzz(func(t *testing.T, b, from []byte, tcp bool) {
		req := new(miekg.Msg)
		if req.Unpack(b) != nil {
			return
		}
		src, ok := netip.AddrFromSlice(from)
		if !ok {
			return
		}
		n.mu.Lock()
		n.asked = nil
		n.mu.Unlock()
		resp := s.respond(t.Context(), clients, src.Unmap(), req, tcp)
		if resp.Id != req.Id {
			t.Errorf("answer ID %d, want %d", resp.Id, req.Id)
		}
		wire, err := resp.Pack()
		if err != nil {
			t.Fatalf("answer does not pack: %v", err)
		}
		if !clients.Contains(src.Unmap()) {
			if resp.Rcode != miekg.RcodeRefused || len(resp.Answer)+len(resp.Ns)+len(resp.Extra) != 0 {
				t.Errorf("query from %s outside %s: rcode %s with %d records, want REFUSED and none",
					src, clients, miekg.RcodeToString[resp.Rcode], len(resp.Answer)+len(resp.Ns)+len(resp.Extra))
			}
			if len(n.asked) != 0 {
				t.Errorf("query from %s outside %s was looked up", src, clients)
			}
		}
		if !tcp && len(wire) > ednsUDPSize {
			t.Errorf("UDP answer of %d bytes, more than %d", len(wire), ednsUDPSize)
		}
	})
}
