package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	miekg "github.com/miekg/dns"
)

const (
	// answerTTL is the TTL of the records the resolver answers itself. Tasks
	// come and go within seconds, so clients must not hold on to an answer
	// for long; a few seconds still spares a chatty client a query per
	// connection.
	answerTTL = 5
	// forwardTimeout bounds one exchange with one upstream. Stub resolvers
	// give up after about 5 s (glibc's default), so a dead first upstream
	// must leave time to try the next one.
	forwardTimeout = 2 * time.Second
	// ednsUDPSize is the largest UDP answer the resolver sends, whatever
	// EDNS size the client claims, and the size it advertises in its own
	// EDNS answers and asks upstreams for: the DNS flag day 2020 value
	// (IPv6's minimum MTU 1280 less 48 bytes of headers). It fits a task's
	// overlay MTU (underlay − 50) unfragmented, so an answer is never a
	// train of IP fragments (which an off-path host can forge into a
	// poisoned answer), and it bounds what one small query can make the
	// node send. A larger answer is truncated (TC) and the client asks
	// again over TCP, as stub resolvers do.
	ednsUDPSize = 1232
	// resolvConf holds the node's nameservers when Config.Upstreams is nil.
	resolvConf = "/etc/resolv.conf"
	// defaultPort is the port stub resolvers query.
	defaultPort = 53
)

// Lookup answers a name for the task at src. ok=false: not a cluster name,
// forward it upstream. The name is lower-case without the trailing dot.
// It is called from many goroutines at once.
type Lookup func(src netip.Addr, name string) (addrs []netip.Addr, ok bool)

// Config configures a Server.
type Config struct {
	Port      int      // 0 = 53
	Upstreams []string // "ip:port"; nil = the nameservers of /etc/resolv.conf (port 53); empty: none, forwarded queries get SERVFAIL
	Lookup    Lookup
	Logger    *slog.Logger // nil = slog.Default()
	NetNSPath string       // open listening sockets inside this network namespace ("" = caller's)
}

// Server is one resolver: the same names and upstreams served on UDP and TCP
// on every gateway SetAddrs gives it, each to the tasks of that gateway's
// subnet only.
type Server struct {
	port      int
	upstreams []string
	lookup    Lookup
	log       *slog.Logger
	netnsPath string

	mu        sync.Mutex
	listeners map[netip.Addr]*listener
	closed    bool
}

// listener serves one address. Cancelling ctx ends its in-flight forwards
// so shutting it down does not wait for slow upstreams.
type listener struct {
	udp, tcp *miekg.Server
	cancel   context.CancelFunc
	// clients is the subnet whose hosts it answers.
	clients netip.Prefix
}

// NewServer checks cfg and reads the upstreams. The server listens nowhere
// until SetAddrs.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Lookup == nil {
		return nil, errors.New("dns server: Config.Lookup is required")
	}
	port := cfg.Port
	if port == 0 {
		port = defaultPort
	}
	if port < 0 || port > 65535 {
		return nil, fmt.Errorf("dns server: port %d out of range", cfg.Port)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	upstreams := cfg.Upstreams
	if upstreams == nil {
		var err error
		if upstreams, err = resolvConfUpstreams(resolvConf); err != nil {
			return nil, fmt.Errorf("dns server: %w; set Config.Upstreams to forward elsewhere", err)
		}
	} else {
		upstreams = make([]string, 0, len(cfg.Upstreams))
		for _, u := range cfg.Upstreams {
			ap, err := netip.ParseAddrPort(u)
			if err != nil {
				return nil, fmt.Errorf("dns server: upstream %q is not ip:port: %w", u, err)
			}
			upstreams = append(upstreams, ap.String())
		}
	}
	return &Server{
		port:      port,
		upstreams: upstreams,
		lookup:    cfg.Lookup,
		log:       log,
		netnsPath: cfg.NetNSPath,
		listeners: map[netip.Addr]*listener{},
	}, nil
}

// resolvConfUpstreams returns the nameservers of a resolv.conf as ip:53.
func resolvConfUpstreams(path string) ([]string, error) {
	cc, err := miekg.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("read upstream nameservers from %s: %w", path, err)
	}
	var upstreams []string
	for _, s := range cc.Servers {
		if _, err := netip.ParseAddr(s); err != nil {
			continue // not an address; the file is the admin's, not ours to reject
		}
		upstreams = append(upstreams, net.JoinHostPort(s, strconv.Itoa(defaultPort)))
	}
	return upstreams, nil
}

// SetAddrs makes the server listen on UDP and TCP on exactly the gateways'
// addresses, each given with its network's prefix length (10.0.1.1/24:
// listen on 10.0.1.1, answer 10.0.1.0/24). A query from outside the
// listener's subnet, such as a host of the underlay that routes to the
// gateway address through the node, is answered REFUSED and neither looked
// up nor forwarded: the resolver is the tasks', not an open resolver for
// the LAN. It starts listeners on new addresses and stops those on
// addresses no longer given; a listener whose subnet changed is restarted.
// An address need not be on an interface yet (the sockets use
// IP_FREEBIND). On error the addresses that failed are not listened on and
// the next SetAddrs tries them again; the others are as asked.
func (s *Server) SetAddrs(gateways []netip.Prefix) error {
	want := make(map[netip.Addr]netip.Prefix, len(gateways))
	for _, g := range gateways {
		if !g.IsValid() {
			return errors.New("dns server: set addresses: invalid gateway prefix")
		}
		a := g.Addr().Unmap()
		bits := g.Bits()
		if g.Addr().Is4In6() {
			bits -= 96
		}
		clients := netip.PrefixFrom(a, bits).Masked()
		if !clients.IsValid() {
			return fmt.Errorf("dns server: set addresses: gateway %s: invalid prefix", g)
		}
		if other, dup := want[a]; dup && other != clients {
			return fmt.Errorf("dns server: set addresses: gateway %s given with subnets %s and %s", a, other, clients)
		}
		want[a] = clients
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("dns server: set addresses: server is closed")
	}
	for a, l := range s.listeners {
		if clients, ok := want[a]; !ok || clients != l.clients {
			l.stop()
			delete(s.listeners, a)
			s.log.Info("dns resolver stopped listening", "addr", a.String(), "netns", s.netnsPath)
		}
	}
	var errs []error
	var start []netip.Addr
	for a := range want {
		if _, ok := s.listeners[a]; !ok {
			start = append(start, a)
		}
	}
	if len(start) == 0 {
		return nil
	}
	socks, err := listenAll(s.netnsPath, start, s.port)
	if err != nil {
		for _, sk := range socks {
			sk.close()
		}
		return fmt.Errorf("dns server: %w", err)
	}
	for _, sk := range socks {
		if sk.err != nil {
			errs = append(errs, sk.err)
			continue
		}
		l, err := s.serve(sk, want[sk.addr])
		if err != nil {
			errs = append(errs, fmt.Errorf("serve dns on %s: %w", sk.addr, err))
			continue
		}
		s.listeners[sk.addr] = l
		s.log.Info("dns resolver listening", "addr", sk.addr.String(), "port", s.port, "clients", want[sk.addr].String(), "netns", s.netnsPath)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dns server: %w", err)
	}
	return nil
}

// Close stops every listener. In-flight forwards are abandoned.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for a, l := range s.listeners {
		l.stop()
		delete(s.listeners, a)
	}
	return nil
}

// serve starts the UDP and TCP servers on sk's sockets and returns once both
// accept queries, so a stop right after cannot race their start.
func (s *Server) serve(sk sockets, clients netip.Prefix) (*listener, error) {
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{cancel: cancel, clients: clients}
	start := func(srv *miekg.Server, what string) error {
		started := make(chan struct{})
		failed := make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				failed <- err
				s.log.Error("dns resolver stopped serving", "addr", sk.addr.String(), "net", what, "err", err)
			}
		}()
		select {
		case <-started:
			return nil
		case err := <-failed:
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	l.udp = &miekg.Server{PacketConn: sk.udp, Net: "udp", Handler: s.handler(ctx, clients, false)}
	if err := start(l.udp, "udp"); err != nil {
		cancel()
		sk.udp.Close()
		sk.tcp.Close()
		return nil, err
	}
	l.tcp = &miekg.Server{Listener: sk.tcp, Net: "tcp", Handler: s.handler(ctx, clients, true)}
	if err := start(l.tcp, "tcp"); err != nil {
		cancel()
		l.udp.Shutdown()
		sk.tcp.Close()
		return nil, err
	}
	return l, nil
}

// stop ends in-flight forwards, then both servers, which wait for their
// handlers and close the sockets.
func (l *listener) stop() {
	l.cancel()
	l.udp.Shutdown()
	l.tcp.Shutdown()
}

func (s *Server) handler(ctx context.Context, clients netip.Prefix, tcp bool) miekg.Handler {
	return miekg.HandlerFunc(func(w miekg.ResponseWriter, req *miekg.Msg) {
		resp := s.respond(ctx, clients, srcAddr(w.RemoteAddr()), req, tcp)
		if err := w.WriteMsg(resp); err != nil {
			s.log.Debug("dns write answer", "remote", w.RemoteAddr().String(), "err", err)
		}
	})
}

// respond is the answer a listener for clients sends to src: REFUSED for
// a source outside clients, else answer's, cut to udpSize over UDP.
func (s *Server) respond(ctx context.Context, clients netip.Prefix, src netip.Addr, req *miekg.Msg, tcp bool) *miekg.Msg {
	if !clients.Contains(src) {
		s.log.Debug("dns query refused: source outside the gateway's subnet", "src", src.String(), "clients", clients.String())
		return refuse(req)
	}
	resp := s.answer(ctx, src, req, tcp)
	if !tcp {
		resp.Truncate(udpSize(req))
	}
	return resp
}

// refuse is the answer to a query from a host the resolver does not serve:
// REFUSED, no records, and the question echoed only (SetRcode), so the
// answer is no larger than the query.
func refuse(req *miekg.Msg) *miekg.Msg {
	m := new(miekg.Msg)
	m.SetRcode(req, miekg.RcodeRefused)
	return m
}

// answer answers req itself when it is an A or AAAA query for a name Lookup
// knows, and asks the upstreams otherwise. The caller has checked that src
// may ask.
func (s *Server) answer(ctx context.Context, src netip.Addr, req *miekg.Msg, tcp bool) *miekg.Msg {
	if req.Opcode != miekg.OpcodeQuery || len(req.Question) != 1 {
		m := new(miekg.Msg)
		return m.SetRcode(req, miekg.RcodeNotImplemented)
	}
	q := req.Question[0]
	if q.Qclass == miekg.ClassINET && (q.Qtype == miekg.TypeA || q.Qtype == miekg.TypeAAAA) {
		name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
		if addrs, ok := s.lookup(src, name); ok {
			s.log.Debug("dns cluster answer", "src", src.String(), "name", name,
				"type", miekg.TypeToString[q.Qtype], "addrs", len(addrs))
			return clusterAnswer(req, addrs)
		}
	}
	s.log.Debug("dns forward", "src", src.String(), "name", q.Name, "type", miekg.TypeToString[q.Qtype])
	return s.forward(ctx, req, tcp)
}

// clusterAnswer is the authoritative answer for a cluster name: its
// addresses of the asked family in random order (clients mostly take the
// first, so this spreads them over dnsrr tasks), NOERROR with no records
// when it has only the other family, and NXDOMAIN when it has no addresses
// at all, as Docker answers for tasks.<service> of a service without tasks.
func clusterAnswer(req *miekg.Msg, addrs []netip.Addr) *miekg.Msg {
	m := new(miekg.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(ednsUDPSize, false)
	}
	if len(addrs) == 0 {
		m.Rcode = miekg.RcodeNameError
		return m
	}
	q := req.Question[0]
	hdr := miekg.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: miekg.ClassINET, Ttl: answerTTL}
	for _, a := range addrs {
		a = a.Unmap()
		switch {
		case q.Qtype == miekg.TypeA && a.Is4():
			m.Answer = append(m.Answer, &miekg.A{Hdr: hdr, A: a.AsSlice()})
		case q.Qtype == miekg.TypeAAAA && a.Is6():
			m.Answer = append(m.Answer, &miekg.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	rand.Shuffle(len(m.Answer), func(i, j int) { m.Answer[i], m.Answer[j] = m.Answer[j], m.Answer[i] })
	return m
}

// forward asks each upstream in turn over the transport the query came in
// on. An upstream that answers SERVFAIL or REFUSED may just be broken, so
// the next one is asked and that answer kept only as a last resort.
func (s *Server) forward(ctx context.Context, req *miekg.Msg, tcp bool) *miekg.Msg {
	c := &miekg.Client{Net: "udp", Timeout: forwardTimeout}
	if tcp {
		c.Net = "tcp"
	} else if opt := req.IsEdns0(); opt != nil && opt.UDPSize() > ednsUDPSize {
		// The answer goes back at most ednsUDPSize long: asking the
		// upstream for more would only fetch what is then cut off.
		req = req.Copy()
		req.IsEdns0().SetUDPSize(ednsUDPSize)
	}
	var fallback *miekg.Msg
	for _, u := range s.upstreams {
		if ctx.Err() != nil {
			break
		}
		resp, _, err := c.ExchangeContext(ctx, req, u)
		if err != nil {
			s.log.Debug("dns upstream failed", "upstream", u, "err", err)
			continue
		}
		if resp.Rcode == miekg.RcodeServerFailure || resp.Rcode == miekg.RcodeRefused {
			fallback = resp
			continue
		}
		return resp
	}
	if fallback != nil {
		return fallback
	}
	m := new(miekg.Msg)
	m.SetRcode(req, miekg.RcodeServerFailure)
	m.RecursionAvailable = true
	return m
}

// udpSize is the largest UDP answer the resolver sends to the client of
// req: what the client's EDNS record accepts, but never more than
// ednsUDPSize, and 512 bytes without EDNS.
func udpSize(req *miekg.Msg) int {
	if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > miekg.MinMsgSize {
		return min(int(opt.UDPSize()), ednsUDPSize)
	}
	return miekg.MinMsgSize
}

// srcAddr is the task address a query came from.
func srcAddr(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.TCPAddr:
		ip = a.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}
