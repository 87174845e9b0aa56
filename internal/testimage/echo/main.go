// Command echo is the workload every shoal test runs: a static binary that
// tells the caller which container answered (hostname, task, slot, env) over
// HTTP, TCP and UDP, and that can be told to crash so restart policies can be
// exercised. It is packed into an image by internal/testimage.
//
// Configuration comes from the environment so a service spec can set it,
// and flags override the environment for running it by hand:
//
//	ECHO_ADDR        --addr         host to listen on (default all)
//	ECHO_HTTP_PORT   --http-port    HTTP port (default 80)
//	ECHO_TCP_PORT    --tcp-port     TCP echo port (default 7)
//	ECHO_UDP_PORT    --udp-port     UDP echo port (default: the HTTP port number)
//	ECHO_CRASH_AFTER --crash-after  exit after this duration (e.g. 0s, 200ms)
//	ECHO_EXIT_CODE   --exit-code    status for that exit (default 3)
//	ECHO_HEALTHY_AFTER   --healthy-after    GET /healthz fails until this long after the start
//	ECHO_UNHEALTHY_AFTER --unhealthy-after  GET /healthz fails from this long after the start on
//	ECHO_ALLOCATE_MB --allocate-mb  once listening, allocate and touch this many MiB
//	                                and keep them (to test memory limits)
//	ECHO_LOG_KIB_S   --log-kib-s    once listening, write this many KiB of log lines a
//	                                second to stdout (a chatty task, to test log bounds)
//
// Port 0 picks a free port; the start line on stdout reports the real ones.
// POST /healthz/fail makes GET /healthz fail from then on, POST /healthz/ok
// makes it pass from then on, whatever the times say (each answer names the
// task, so a test that sends it through a load balancer learns which task
// it changed).
//
// Run with a command instead, echo is a client, so tests can run it inside a
// task's namespaces (nsenter) and see the network and /etc/resolv.conf the
// task sees. It prints what it got on stdout and exits 1 on failure:
//
//	echo get URL                 HTTP GET, prints the body (a status other than 2xx fails)
//	echo gets N URL              N HTTP GETs one after the other, each on a new connection (so
//	                             that a load balancer picks a backend for each), prints the bodies
//	echo resolve NAME            prints NAME's IPv4 addresses, one per line, in ascending order,
//	                             resolved by the Go resolver from /etc/resolv.conf and /etc/hosts
//	echo udp HOST:PORT MESSAGE   sends MESSAGE in one datagram, prints the reply
//	echo health                  GET /healthz of the echo server of this container
//	                             (ECHO_ADDR or 127.0.0.1, ECHO_HTTP_PORT or 80): a health check
//	echo set-health ok|fail      POST /healthz/ok or /healthz/fail to that server: pass or fail from now on
//	echo sleep DURATION          sleeps, a health check that hangs
//
// Run as sh (the image links /bin/sh to it), echo is a minimal shell for
// health checks of the CMD-SHELL form: `sh -c 'PROGRAM ARGS...'` splits the
// command at white space and executes it; no quoting, variables, pipes or
// operators.
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// shutdownTimeout bounds the graceful HTTP shutdown: orchestrators stop
	// a task with SIGTERM and a grace period of seconds, and tests wait for
	// the exit, so in-flight requests get a moment, not longer.
	shutdownTimeout = 2 * time.Second
	// readHeaderTimeout keeps a half-open client from holding a handler.
	readHeaderTimeout = 10 * time.Second
	// maxDatagram is the largest UDP payload.
	maxDatagram = 64 * 1024
	// defaultCrashCode is distinct from 1 (generic error) and 2 (usage) so
	// tests can tell a requested crash from a broken start.
	defaultCrashCode = 3

	// Client timeouts: long enough for a first ARP exchange or a resolver
	// trying a second nameserver, short enough that a test expecting a
	// failure is not slowed down much. A datagram lost is lost, so udp waits
	// least.
	getTimeout     = 5 * time.Second
	resolveTimeout = 5 * time.Second
	udpTimeout     = 2 * time.Second
)

type config struct {
	addr           string
	httpPort       int
	tcpPort        int
	udpPort        int
	crashAfter     time.Duration // < 0: never
	exitCode       int
	healthyAfter   time.Duration
	unhealthyAfter time.Duration // < 0: never
	allocateMB     int
	logKiBs        int
}

func main() {
	if filepath.Base(os.Args[0]) == "sh" {
		os.Exit(runShell(os.Args[1:], os.Stderr))
	}
	if len(os.Args) > 1 {
		if cmd, ok := clientCommands[os.Args[1]]; ok {
			// The Go resolver reads /etc/resolv.conf itself, which is what
			// the client mode is for; cgo would ask libc, which the static
			// image may not have anyway.
			net.DefaultResolver.PreferGo = true
			os.Exit(runClient(cmd, os.Args[1:], os.Stdout, os.Stderr, net.DefaultResolver))
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	code, err := run(ctx, cfg, log)
	if err != nil {
		log.Error("echo failed", "err", err)
	}
	os.Exit(code)
}

// parseConfig reads the environment first and lets flags override it.
func parseConfig(args []string, getenv func(string) string) (config, error) {
	cfg := config{crashAfter: -1, exitCode: defaultCrashCode, httpPort: 80, tcpPort: 7, udpPort: -1, unhealthyAfter: -1}
	envInt := func(key string, dst *int) error {
		if v := getenv(key); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("parse %s=%q: %w", key, v, err)
			}
			*dst = n
		}
		return nil
	}
	cfg.addr = getenv("ECHO_ADDR")
	for key, dst := range map[string]*int{
		"ECHO_HTTP_PORT":   &cfg.httpPort,
		"ECHO_TCP_PORT":    &cfg.tcpPort,
		"ECHO_UDP_PORT":    &cfg.udpPort,
		"ECHO_EXIT_CODE":   &cfg.exitCode,
		"ECHO_ALLOCATE_MB": &cfg.allocateMB,
		"ECHO_LOG_KIB_S":   &cfg.logKiBs,
	} {
		if err := envInt(key, dst); err != nil {
			return cfg, err
		}
	}
	for key, dst := range map[string]*time.Duration{
		"ECHO_CRASH_AFTER":     &cfg.crashAfter,
		"ECHO_HEALTHY_AFTER":   &cfg.healthyAfter,
		"ECHO_UNHEALTHY_AFTER": &cfg.unhealthyAfter,
	} {
		if v := getenv(key); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				return cfg, fmt.Errorf("parse %s=%q: %w", key, v, err)
			}
			*dst = d
		}
	}

	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	fs.StringVar(&cfg.addr, "addr", cfg.addr, "host to listen on")
	fs.IntVar(&cfg.httpPort, "http-port", cfg.httpPort, "HTTP port (0: any free port)")
	fs.IntVar(&cfg.tcpPort, "tcp-port", cfg.tcpPort, "TCP echo port (0: any free port)")
	fs.IntVar(&cfg.udpPort, "udp-port", cfg.udpPort, "UDP echo port (default: the HTTP port number)")
	fs.DurationVar(&cfg.crashAfter, "crash-after", cfg.crashAfter, "exit with --exit-code after this long (negative: never)")
	fs.IntVar(&cfg.exitCode, "exit-code", cfg.exitCode, "exit status for --crash-after")
	fs.DurationVar(&cfg.healthyAfter, "healthy-after", cfg.healthyAfter, "GET /healthz fails until this long after the start")
	fs.DurationVar(&cfg.unhealthyAfter, "unhealthy-after", cfg.unhealthyAfter, "GET /healthz fails from this long after the start on (negative: never)")
	fs.IntVar(&cfg.allocateMB, "allocate-mb", cfg.allocateMB, "once listening, allocate and keep this many MiB")
	fs.IntVar(&cfg.logKiBs, "log-kib-s", cfg.logKiBs, "once listening, write this many KiB of log lines a second to stdout")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if cfg.udpPort < 0 {
		cfg.udpPort = cfg.httpPort
	}
	if cfg.allocateMB < 0 {
		return cfg, fmt.Errorf("--allocate-mb %d is negative", cfg.allocateMB)
	}
	if cfg.logKiBs < 0 {
		return cfg, fmt.Errorf("--log-kib-s %d is negative", cfg.logKiBs)
	}
	for name, p := range map[string]int{"http": cfg.httpPort, "tcp": cfg.tcpPort, "udp": cfg.udpPort} {
		if p < 0 || p > 65535 {
			return cfg, fmt.Errorf("%s port %d out of range", name, p)
		}
	}
	return cfg, nil
}

// run serves until ctx ends (exit 0) or the crash timer fires (cfg.exitCode).
func run(ctx context.Context, cfg config, log *slog.Logger) (int, error) {
	hostname, err := os.Hostname()
	if err != nil {
		return 1, fmt.Errorf("read hostname: %w", err)
	}

	httpLn, err := net.Listen("tcp", net.JoinHostPort(cfg.addr, strconv.Itoa(cfg.httpPort)))
	if err != nil {
		return 1, fmt.Errorf("listen http: %w", err)
	}
	defer httpLn.Close()
	tcpLn, err := net.Listen("tcp", net.JoinHostPort(cfg.addr, strconv.Itoa(cfg.tcpPort)))
	if err != nil {
		return 1, fmt.Errorf("listen tcp echo: %w", err)
	}
	defer tcpLn.Close()
	udpConn, err := net.ListenPacket("udp", net.JoinHostPort(cfg.addr, strconv.Itoa(cfg.udpPort)))
	if err != nil {
		return 1, fmt.Errorf("listen udp echo: %w", err)
	}
	defer udpConn.Close()

	h := &health{start: time.Now(), healthyAfter: cfg.healthyAfter, unhealthyAfter: cfg.unhealthyAfter}
	srv := &http.Server{Handler: newHandler(hostname, h), ReadHeaderTimeout: readHeaderTimeout}
	tcp := &tcpEcho{hostname: hostname, conns: map[net.Conn]struct{}{}}

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		if err := srv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	})
	wg.Go(func() { tcp.serve(tcpLn, log) })
	wg.Go(func() { serveUDP(udpConn, hostname, log) })

	log.Info("echo listening", "hostname", hostname,
		"http", httpLn.Addr().String(), "tcp", tcpLn.Addr().String(), "udp", udpConn.LocalAddr().String(),
		"crash_after", cfg.crashAfter.String())
	held := allocate(cfg.allocateMB)
	if cfg.allocateMB > 0 {
		log.Info("echo allocated memory", "mib", len(held))
	}

	if cfg.logKiBs > 0 {
		wg.Go(func() { chatter(ctx, cfg.logKiBs) })
	}

	var crash <-chan time.Time
	if cfg.crashAfter >= 0 {
		t := time.NewTimer(cfg.crashAfter)
		defer t.Stop()
		crash = t.C
	}
	code := 0
	select {
	case <-ctx.Done():
		log.Info("echo stopping", "reason", "signal")
	case <-crash:
		log.Info("echo crashing as asked", "exit_code", cfg.exitCode)
		code = cfg.exitCode
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
	}
	tcpLn.Close()
	tcp.closeAll()
	udpConn.Close()
	runtime.KeepAlive(held)
	return code, nil
}

// chatter writes kibs KiB of numbered 64-byte lines a second to stdout,
// in ten bursts a second, until ctx ends.
func chatter(ctx context.Context, kibs int) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	n := 0
	var buf []byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		buf = buf[:0]
		for range max(kibs*1024/64/10, 1) {
			buf = fmt.Appendf(buf, "chatter %012d %s\n", n, "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz"[:42])
			n++
		}
		os.Stdout.Write(buf)
	}
}

// pageSize is the unit the kernel charges memory in: touching one byte
// per page makes the whole allocation resident.
const pageSize = 4096

// allocate allocates mib MiB, one MiB at a time, and writes to every page
// so that the memory is really used (and charged to the cgroup).
func allocate(mib int) [][]byte {
	held := make([][]byte, 0, mib)
	for range mib {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += pageSize {
			b[i] = 1
		}
		held = append(held, b)
	}
	return held
}

// report is what GET / and GET /json tell the caller.
type report struct {
	Hostname string            `json:"hostname"`
	Task     string            `json:"task"`
	Service  string            `json:"service"`
	Slot     string            `json:"slot"`
	Remote   string            `json:"remote"`
	Env      map[string]string `json:"env"`
}

func newReport(hostname, remote string) report {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return report{
		Hostname: hostname,
		Task:     os.Getenv("SHOAL_TASK_NAME"),
		Service:  os.Getenv("SHOAL_SERVICE_NAME"),
		Slot:     os.Getenv("SHOAL_TASK_SLOT"),
		Remote:   remote,
		Env:      env,
	}
}

func (r report) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "hostname=%s\ntask=%s\nservice=%s\nslot=%s\nremote=%s\n", r.Hostname, r.Task, r.Service, r.Slot, r.Remote)
	keys := make([]string, 0, len(r.Env))
	for k := range r.Env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "env %s=%s\n", k, r.Env[k])
	}
	return b.String()
}

// health is what GET /healthz says: as the last POST /healthz/ok or
// /healthz/fail said, else failing before healthyAfter and from
// unhealthyAfter on.
type health struct {
	start          time.Time
	healthyAfter   time.Duration
	unhealthyAfter time.Duration // < 0: never
	// told is the last POST: 0 none, told{OK,Fail}.
	told atomic.Int32
}

const (
	toldOK   = 1
	toldFail = 2
)

// problem is why the server is unhealthy; "" when it is healthy.
func (h *health) problem() string {
	up := time.Since(h.start)
	switch told := h.told.Load(); {
	case told == toldOK:
		return ""
	case told == toldFail:
		return "failing as asked (POST /healthz/fail)"
	case up < h.healthyAfter:
		return fmt.Sprintf("starting: healthy after %s", h.healthyAfter)
	case h.unhealthyAfter >= 0 && up >= h.unhealthyAfter:
		return fmt.Sprintf("unhealthy since %s after the start", h.unhealthyAfter)
	}
	return ""
}

func newHandler(hostname string, h *health) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if p := h.problem(); p != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, p)
			return
		}
		io.WriteString(w, "ok")
	})
	setHealth := func(told int32) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			h.told.Store(told)
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			io.WriteString(w, newReport(hostname, r.RemoteAddr).text())
		}
	}
	mux.HandleFunc("POST /healthz/fail", setHealth(toldFail))
	mux.HandleFunc("POST /healthz/ok", setHealth(toldOK))
	mux.HandleFunc("GET /json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(newReport(hostname, r.RemoteAddr))
	})
	// Every other path answers like /, so a test may curl any URL through
	// the routing mesh and still learn which task answered.
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, newReport(hostname, r.RemoteAddr).text())
	})
	return mux
}

// tcpEcho greets each connection with the hostname, then echoes. It keeps
// the open connections so shutdown can end them instead of waiting for
// clients to hang up.
type tcpEcho struct {
	hostname string
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

func (e *tcpEcho) serve(ln net.Listener, log *slog.Logger) {
	defer e.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Error("tcp echo accept", "err", err)
			}
			return
		}
		if !e.track(c) {
			c.Close()
			return
		}
		e.wg.Go(func() {
			defer e.untrack(c)
			if _, err := fmt.Fprintf(c, "hostname=%s\n", e.hostname); err != nil {
				return
			}
			io.Copy(c, c)
		})
	}
}

func (e *tcpEcho) track(c net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.conns[c] = struct{}{}
	return true
}

func (e *tcpEcho) untrack(c net.Conn) {
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
	c.Close()
}

func (e *tcpEcho) closeAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for c := range e.conns {
		c.Close()
	}
}

// serveUDP answers each datagram until conn is closed: "hostname=H
// task=T remote=ADDR " and the datagram (task= only in a shoal task, from
// SHOAL_TASK_NAME), so that a client tells tasks of one slot apart, as
// over HTTP.
func serveUDP(conn net.PacketConn, hostname string, log *slog.Logger) {
	prefix := "hostname=" + hostname + " "
	if task := os.Getenv("SHOAL_TASK_NAME"); task != "" {
		prefix += "task=" + task + " "
	}
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Error("udp echo read", "err", err)
			}
			return
		}
		reply := append([]byte(prefix+"remote="+from.String()+" "), buf[:n]...)
		if _, err := conn.WriteTo(reply, from); err != nil {
			log.Warn("udp echo reply", "remote", from.String(), "err", err)
		}
	}
}

// clientCommand is one client mode: its arguments after the command name.
type clientCommand struct {
	usage string
	nargs int
	run   func(args []string, stdout io.Writer, r *net.Resolver) error
}

var clientCommands = map[string]clientCommand{
	"get":     {usage: "get URL", nargs: 1, run: func(a []string, w io.Writer, _ *net.Resolver) error { return httpGet(a[0], w) }},
	"resolve": {usage: "resolve NAME", nargs: 1, run: func(a []string, w io.Writer, r *net.Resolver) error { return resolve(r, a[0], w) }},
	"udp":     {usage: "udp HOST:PORT MESSAGE", nargs: 2, run: func(a []string, w io.Writer, _ *net.Resolver) error { return udpSend(a[0], a[1], w) }},
	"health": {usage: "health", run: func(_ []string, w io.Writer, _ *net.Resolver) error {
		// The answer on a line of its own, apart from an error on stderr.
		defer io.WriteString(w, "\n")
		return httpGet(ownURL(os.Getenv, "/healthz"), w)
	}},
	"set-health": {usage: "set-health ok|fail", nargs: 1, run: func(a []string, w io.Writer, _ *net.Resolver) error { return setHealth(a[0], w) }},
	"sleep":      {usage: "sleep DURATION", nargs: 1, run: func(a []string, _ io.Writer, _ *net.Resolver) error { return sleep(a[0]) }},
	"gets": {usage: "gets N URL", nargs: 2, run: func(a []string, w io.Writer, _ *net.Resolver) error {
		n, err := strconv.Atoi(a[0])
		if err != nil || n < 1 {
			return fmt.Errorf("gets: %q is not a count of requests", a[0])
		}
		return httpGets(a[1], n, w)
	}},
}

// runClient runs a client command (args[0] names it) and returns the exit
// status: 0 done, 1 failed, 2 usage.
func runClient(cmd clientCommand, args []string, stdout, stderr io.Writer, r *net.Resolver) int {
	if len(args)-1 != cmd.nargs {
		fmt.Fprintln(stderr, "usage: echo", cmd.usage)
		return 2
	}
	if err := cmd.run(args[1:], stdout, r); err != nil {
		fmt.Fprintln(stderr, "echo:", err)
		return 1
	}
	return 0
}

// httpGet prints the body of url.
func httpGet(url string, w io.Writer) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	return fetch(req, w)
}

// fetch sends req and prints the body of the answer, even for an error
// status, since it usually says what went wrong.
func fetch(req *http.Request, w io.Writer) error {
	client := &http.Client{Timeout: getTimeout}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("read body of %s: %w", req.URL, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s %s: %s", req.Method, req.URL, resp.Status)
	}
	return nil
}

// httpGets is httpGet n times, each on a connection of its own: through a
// VIP, each is balanced afresh.
func httpGets(url string, n int, w io.Writer) error {
	noKeepAlive := &http.Transport{DisableKeepAlives: true}
	defer noKeepAlive.CloseIdleConnections()
	client := &http.Client{Timeout: getTimeout, Transport: noKeepAlive}
	for range n {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		_, err = io.Copy(w, resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("read body of %s: %w", url, err)
		}
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
	}
	return nil
}

// resolve prints the IPv4 addresses of name, one per line, in ascending
// order so that tests can compare the output with a list.
func resolve(r *net.Resolver, name string, w io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	addrs, err := r.LookupNetIP(ctx, "ip4", name)
	if err != nil {
		return err
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range slices.Compact(addrs) {
		fmt.Fprintln(w, a)
	}
	return nil
}

// udpSend sends msg in one datagram to addr and prints the reply.
func udpSend(addr, msg string, w io.Writer) error {
	conn, err := net.DialTimeout("udp", addr, udpTimeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(udpTimeout)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte(msg)); err != nil {
		return fmt.Errorf("send to %s: %w", addr, err)
	}
	buf := make([]byte, maxDatagram)
	n, err := conn.Read(buf)
	if err != nil {
		return fmt.Errorf("no reply from %s: %w", addr, err)
	}
	reply := buf[:n]
	if !bytes.HasSuffix(reply, []byte("\n")) {
		reply = append(reply, '\n')
	}
	_, err = w.Write(reply)
	return err
}

// ownURL is the URL of path on the echo server of this container, as its
// environment configures it.
func ownURL(getenv func(string) string, path string) string {
	host := cmp.Or(getenv("ECHO_ADDR"), "127.0.0.1")
	port := cmp.Or(getenv("ECHO_HTTP_PORT"), "80")
	return "http://" + net.JoinHostPort(host, port) + path
}

// setHealth tells this container's echo server to pass or fail its
// health check from now on, and prints its answer (which names the task).
func setHealth(to string, w io.Writer) error {
	if to != "ok" && to != "fail" {
		return fmt.Errorf("set-health %q: want ok or fail", to)
	}
	req, err := http.NewRequest(http.MethodPost, ownURL(os.Getenv, "/healthz/"+to), nil)
	if err != nil {
		return err
	}
	return fetch(req, w)
}

func sleep(d string) error {
	dur, err := time.ParseDuration(d)
	if err != nil {
		return err
	}
	time.Sleep(dur)
	return nil
}

// shellWords is the program and arguments of `sh -c COMMAND`.
func shellWords(args []string) ([]string, error) {
	if len(args) != 2 || args[0] != "-c" {
		return nil, errors.New("usage: sh -c 'PROGRAM [ARGS...]' (echo's minimal shell for health checks)")
	}
	words := strings.Fields(args[1])
	if len(words) == 0 {
		return nil, nil
	}
	return words, nil
}

// runShell executes the command of `sh -c COMMAND` in place of this
// process. It returns only on failure, with sh's statuses: 2 for usage,
// 127 for a program that cannot be found or run.
func runShell(args []string, stderr io.Writer) int {
	words, err := shellWords(args)
	if err != nil {
		fmt.Fprintln(stderr, "sh:", err)
		return 2
	}
	if words == nil {
		return 0
	}
	path, err := exec.LookPath(words[0])
	if err == nil {
		err = syscall.Exec(path, words, os.Environ())
	}
	fmt.Fprintf(stderr, "sh: %s: %v\n", words[0], err)
	return 127
}
