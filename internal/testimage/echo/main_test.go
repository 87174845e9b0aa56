package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// asServerEnv makes the test binary act as the echo command, so the tests
// run the real main (signals, exit codes) without a separate go build.
const asServerEnv = "ECHO_TEST_AS_SERVER"

// hangGuard only stops a broken test from hanging the run; it is not a
// latency assertion (that is BenchmarkShutdown's job).
const hangGuard = 30 * time.Second

func TestMain(m *testing.M) {
	if os.Getenv(asServerEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// server is one echo process started by a test.
type server struct {
	cmd            *exec.Cmd
	http, tcp, udp string
	done           chan struct{}
	waitErr        error
}

// startServer runs the echo command on loopback with free ports and waits
// for its start line.
func startServer(t testing.TB, env []string, args ...string) *server {
	t.Helper()
	args = append([]string{"--addr", "127.0.0.1", "--http-port", "0", "--tcp-port", "0", "--udp-port", "0"}, args...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), asServerEnv+"=1"), env...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start echo: %v", err)
	}
	s := &server{cmd: cmd, done: make(chan struct{})}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// drain keeps reading stdout so the child never blocks on a full
	// pipe, then reaps it. It starts only after the start line was taken:
	// started earlier, it could take the start line itself.
	drain := func() {
		go func() {
			for range lines {
			}
			s.waitErr = cmd.Wait()
			close(s.done)
		}()
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-s.done
	})

	select {
	case line, ok := <-lines:
		drain()
		if !ok {
			<-s.done
			t.Fatalf("echo exited before its start line: %v", s.waitErr)
		}
		fields := parseLogLine(line)
		s.http, s.tcp, s.udp = fields["http"], fields["tcp"], fields["udp"]
		if s.http == "" || s.tcp == "" || s.udp == "" {
			t.Fatalf("start line lacks addresses: %q", line)
		}
	case <-time.After(hangGuard):
		drain()
		t.Fatal("no start line from echo")
	}
	return s
}

// parseLogLine reads key=value pairs of a slog text line (values here have
// no spaces except the quoted msg, which is skipped).
func parseLogLine(line string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}

// exitCode waits for the process and returns its status.
func (s *server) exitCode(t testing.TB) int {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(hangGuard):
		t.Fatal("echo did not exit")
	}
	if s.waitErr == nil {
		return 0
	}
	var ee *exec.ExitError
	if !errors.As(s.waitErr, &ee) {
		t.Fatalf("wait echo: %v", s.waitErr)
	}
	return ee.ExitCode()
}

func TestHTTP(t *testing.T) {
	s := startServer(t, []string{
		"SHOAL_TASK_NAME=web.2.abc", "SHOAL_SERVICE_NAME=web", "SHOAL_TASK_SLOT=2", "ECHO_TEST_MARKER=marker-value",
	})
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: hangGuard}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get("http://" + s.http + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		return resp.StatusCode, string(body)
	}

	tests := []struct {
		path      string
		wantLines []string
	}{
		{"/", []string{"hostname=" + hostname, "task=web.2.abc", "service=web", "slot=2", "env ECHO_TEST_MARKER=marker-value"}},
		{"/any/path", []string{"hostname=" + hostname, "service=web"}},
		{"/healthz", []string{"ok"}},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			code, body := get(tt.path)
			if code != http.StatusOK {
				t.Fatalf("GET %s: status %d, body %q", tt.path, code, body)
			}
			lines := strings.Split(body, "\n")
			for _, want := range tt.wantLines {
				if !contains(lines, want) {
					t.Errorf("GET %s: no line %q in\n%s", tt.path, want, body)
				}
			}
		})
	}

	t.Run("remote and sorted env", func(t *testing.T) {
		_, body := get("/")
		var remote string
		var envKeys []string
		for _, l := range strings.Split(body, "\n") {
			if r, ok := strings.CutPrefix(l, "remote="); ok {
				remote = r
			}
			if kv, ok := strings.CutPrefix(l, "env "); ok {
				k, _, _ := strings.Cut(kv, "=")
				envKeys = append(envKeys, k)
			}
		}
		if host, _, err := net.SplitHostPort(remote); err != nil || host != "127.0.0.1" {
			t.Errorf("remote=%q, want 127.0.0.1:port", remote)
		}
		for i := 1; i < len(envKeys); i++ {
			if envKeys[i-1] > envKeys[i] {
				t.Errorf("env not sorted: %q before %q", envKeys[i-1], envKeys[i])
			}
		}
	})

	t.Run("/json", func(t *testing.T) {
		code, body := get("/json")
		if code != http.StatusOK {
			t.Fatalf("status %d", code)
		}
		var r report
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("decode %q: %v", body, err)
		}
		if r.Hostname != hostname || r.Task != "web.2.abc" || r.Slot != "2" || r.Env["ECHO_TEST_MARKER"] != "marker-value" {
			t.Errorf("unexpected report %+v", r)
		}
	})
}

func contains(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

func TestTCPEcho(t *testing.T) {
	s := startServer(t, nil)
	hostname, _ := os.Hostname()
	c, err := net.DialTimeout("tcp", s.tcp, hangGuard)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(hangGuard))
	r := bufio.NewReader(c)
	greeting, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	if greeting != "hostname="+hostname+"\n" {
		t.Errorf("greeting %q, want hostname=%s", greeting, hostname)
	}
	for _, msg := range []string{"ping\n", "second line\n"} {
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		got, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read echo: %v", err)
		}
		if got != msg {
			t.Errorf("echo %q, want %q", got, msg)
		}
	}
}

func TestUDPEcho(t *testing.T) {
	s := startServer(t, nil)
	hostname, _ := os.Hostname()
	c, err := net.Dial("udp", s.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(hangGuard))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	want := "hostname=" + hostname + " remote=" + c.LocalAddr().String() + " hello"
	if got := string(buf[:n]); got != want {
		t.Errorf("reply %q, want %q", got, want)
	}
}

func TestSignalsExitZero(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			s := startServer(t, nil)
			// An open TCP echo connection must not hold the exit back.
			c, err := net.Dial("tcp", s.tcp)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := s.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := s.exitCode(t); code != 0 {
				t.Errorf("exit status %d after %v, want 0", code, sig)
			}
		})
	}
}

func TestCrashAfter(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		args []string
		want int
	}{
		{"flag", nil, []string{"--crash-after", "0s"}, 3},
		{"flag with code", nil, []string{"--crash-after", "10ms", "--exit-code", "5"}, 5},
		{"env", []string{"ECHO_CRASH_AFTER=20ms"}, nil, 3},
		{"env code", []string{"ECHO_CRASH_AFTER=0s", "ECHO_EXIT_CODE=7"}, nil, 7},
		{"flag overrides env", []string{"ECHO_CRASH_AFTER=1h"}, []string{"--crash-after", "0s"}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, tt.env, tt.args...)
			if code := s.exitCode(t); code != tt.want {
				t.Errorf("exit status %d, want %d", code, tt.want)
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    config
		wantErr bool
	}{
		{"defaults", nil, nil, config{httpPort: 80, tcpPort: 7, udpPort: 80, crashAfter: -1, exitCode: 3, unhealthyAfter: -1}, false},
		{"udp follows http env", map[string]string{"ECHO_HTTP_PORT": "8080"}, nil,
			config{httpPort: 8080, tcpPort: 7, udpPort: 8080, crashAfter: -1, exitCode: 3, unhealthyAfter: -1}, false},
		{"udp follows http flag", map[string]string{"ECHO_HTTP_PORT": "8080"}, []string{"--http-port", "9000"},
			config{httpPort: 9000, tcpPort: 7, udpPort: 9000, crashAfter: -1, exitCode: 3, unhealthyAfter: -1}, false},
		{"explicit udp", map[string]string{"ECHO_UDP_PORT": "53", "ECHO_TCP_PORT": "9"}, nil,
			config{httpPort: 80, tcpPort: 9, udpPort: 53, crashAfter: -1, exitCode: 3, unhealthyAfter: -1}, false},
		{"crash env", map[string]string{"ECHO_CRASH_AFTER": "200ms", "ECHO_EXIT_CODE": "4"}, nil,
			config{httpPort: 80, tcpPort: 7, udpPort: 80, crashAfter: 200 * time.Millisecond, exitCode: 4, unhealthyAfter: -1}, false},
		{"health env", map[string]string{"ECHO_HEALTHY_AFTER": "2s", "ECHO_UNHEALTHY_AFTER": "1m"}, nil,
			config{httpPort: 80, tcpPort: 7, udpPort: 80, crashAfter: -1, exitCode: 3, healthyAfter: 2 * time.Second, unhealthyAfter: time.Minute}, false},
		{"health flags", nil, []string{"--healthy-after", "1s", "--unhealthy-after", "0s"},
			config{httpPort: 80, tcpPort: 7, udpPort: 80, crashAfter: -1, exitCode: 3, healthyAfter: time.Second}, false},
		{"bad health duration", map[string]string{"ECHO_UNHEALTHY_AFTER": "later"}, nil, config{}, true},
		{"allocate env", map[string]string{"ECHO_ALLOCATE_MB": "64"}, nil,
			config{httpPort: 80, tcpPort: 7, udpPort: 80, crashAfter: -1, exitCode: 3, unhealthyAfter: -1, allocateMB: 64}, false},
		{"allocate flag", nil, []string{"--allocate-mb", "8"},
			config{httpPort: 80, tcpPort: 7, udpPort: 80, crashAfter: -1, exitCode: 3, unhealthyAfter: -1, allocateMB: 8}, false},
		{"negative allocation", nil, []string{"--allocate-mb", "-1"}, config{}, true},
		{"bad port env", map[string]string{"ECHO_HTTP_PORT": "http"}, nil, config{}, true},
		{"port out of range", nil, []string{"--tcp-port", "70000"}, config{}, true},
		{"bad duration", map[string]string{"ECHO_CRASH_AFTER": "soon"}, nil, config{}, true},
		{"stray argument", nil, []string{"serve"}, config{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseConfig(tt.args, func(k string) string { return tt.env[k] })
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// BenchmarkShutdown measures start-to-exit after SIGTERM, the latency an
// orchestrator sees when it stops a task.
func BenchmarkShutdown(b *testing.B) {
	for b.Loop() {
		s := startServer(b, nil)
		s.cmd.Process.Signal(syscall.SIGTERM)
		if code := s.exitCode(b); code != 0 {
			b.Fatalf("exit status %d", code)
		}
	}
}

// client runs a client command in-process and returns its status and
// output.
func client(t *testing.T, r *net.Resolver, args ...string) (int, string, string) {
	t.Helper()
	cmd, ok := clientCommands[args[0]]
	if !ok {
		t.Fatalf("no client command %q", args[0])
	}
	var stdout, stderr strings.Builder
	code := runClient(cmd, args, &stdout, &stderr, r)
	return code, stdout.String(), stderr.String()
}

// closedPort is a 127.0.0.1 address nothing listens on.
func closedPort(t *testing.T, network string) string {
	t.Helper()
	var addr string
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = pc.LocalAddr().String()
		pc.Close()
	} else {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		ln.Close()
	}
	return addr
}

func TestClientGet(t *testing.T) {
	s := startServer(t, []string{"SHOAL_TASK_NAME=web.1.xyz"})
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no backend", http.StatusServiceUnavailable)
	}))
	defer failing.Close()

	for _, tc := range []struct {
		name, url string
		code      int
		stdout    string // a line of it
	}{
		{"healthz", "http://" + s.http + "/healthz", 0, "ok"},
		{"report", "http://" + s.http + "/", 0, "task=web.1.xyz"},
		{"error status", failing.URL, 1, "no backend"},
		{"nothing listening", "http://" + closedPort(t, "tcp") + "/", 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := client(t, nil, "get", tc.url)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, stderr)
			}
			if tc.stdout != "" && !contains(strings.Split(stdout, "\n"), tc.stdout) {
				t.Errorf("stdout %q lacks line %q", stdout, tc.stdout)
			}
			if (code != 0) != (stderr != "") {
				t.Errorf("exit %d with stderr %q", code, stderr)
			}
		})
	}
}

// fakeResolver is a Go resolver whose every query goes to a DNS server on
// loopback that knows web.example (three IPv4 addresses, one twice, and an
// IPv6 one) and nothing else.
func fakeResolver(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg).SetReply(req)
		q := req.Question[0]
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 5}
		switch {
		case q.Name != "web.example.":
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			for _, ip := range []string{"10.0.0.10", "10.0.0.9", "10.0.0.2", "10.0.0.9"} {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.ParseIP(ip)})
			}
		case q.Qtype == dns.TypeAAAA:
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.ParseIP("fd00::1")})
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", pc.LocalAddr().String())
	}}
}

func TestClientResolve(t *testing.T) {
	r := fakeResolver(t)
	for _, tc := range []struct {
		name   string
		code   int
		stdout string
	}{
		{"web.example.", 0, "10.0.0.2\n10.0.0.9\n10.0.0.10\n"},
		{"127.0.0.7", 0, "127.0.0.7\n"},
		{"missing.example.", 1, ""},
		{"not a name", 1, ""},
	} {
		code, stdout, stderr := client(t, r, "resolve", tc.name)
		if code != tc.code || stdout != tc.stdout {
			t.Errorf("resolve %q: exit %d, stdout %q (stderr %q); want exit %d, stdout %q",
				tc.name, code, stdout, stderr, tc.code, tc.stdout)
		}
	}
}

func TestClientUDP(t *testing.T) {
	s := startServer(t, nil)
	code, stdout, stderr := client(t, nil, "udp", s.udp, "ping")
	if code != 0 || !strings.HasPrefix(stdout, "hostname=") || !strings.HasSuffix(stdout, " ping\n") {
		t.Errorf("udp to echo: exit %d, stdout %q, stderr %q; want the echo's reply", code, stdout, stderr)
	}
	if code, _, stderr := client(t, nil, "udp", closedPort(t, "udp"), "ping"); code != 1 || stderr == "" {
		t.Errorf("udp to a closed port: exit %d, stderr %q; want 1 with a reason", code, stderr)
	}
}

// useServer points the health and set-health commands at s, as the
// container's environment would.
func useServer(t *testing.T, s *server) {
	host, port, err := net.SplitHostPort(s.http)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("ECHO_ADDR", host)
	t.Setenv("ECHO_HTTP_PORT", port)
}

// TestClientHealth flips the server's health the ways tests do: a start
// during which it fails, a failure asked for (whose answer names the
// task), and a time after which it fails for good.
func TestClientHealth(t *testing.T) {
	check := func(t *testing.T, want int, wantOut string) {
		t.Helper()
		code, stdout, stderr := client(t, nil, "health")
		if code != want || !strings.Contains(stdout, wantOut) {
			t.Errorf("health: exit %d, stdout %q, stderr %q; want exit %d and %q", code, stdout, stderr, want, wantOut)
		}
	}
	t.Run("healthy after", func(t *testing.T) {
		useServer(t, startServer(t, []string{"ECHO_HEALTHY_AFTER=400ms", "SHOAL_TASK_NAME=web.1.abc"}))
		check(t, 1, "starting: healthy after 400ms")
		deadline := time.Now().Add(hangGuard)
		for code, _, _ := client(t, nil, "health"); code != 0; code, _, _ = client(t, nil, "health") {
			if time.Now().After(deadline) {
				t.Fatal("never became healthy")
			}
			time.Sleep(50 * time.Millisecond)
		}
		code, stdout, _ := client(t, nil, "set-health", "fail")
		if code != 0 || !strings.Contains(stdout, "task=web.1.abc") {
			t.Errorf("set-health fail: exit %d, stdout %q; want 0 and the task's name", code, stdout)
		}
		check(t, 1, "failing as asked")
		if code, _, stderr := client(t, nil, "set-health", "ok"); code != 0 {
			t.Errorf("set-health ok: exit %d, stderr %q", code, stderr)
		}
		check(t, 0, "ok")
	})
	t.Run("unhealthy after", func(t *testing.T) {
		useServer(t, startServer(t, nil, "--unhealthy-after", "0s"))
		check(t, 1, "unhealthy since 0s after the start")
	})
	t.Run("told to pass before its time", func(t *testing.T) {
		useServer(t, startServer(t, []string{"ECHO_HEALTHY_AFTER=1h"}))
		check(t, 1, "starting: healthy after 1h0m0s")
		if code, _, stderr := client(t, nil, "set-health", "ok"); code != 0 {
			t.Fatalf("set-health ok: exit %d, stderr %q", code, stderr)
		}
		check(t, 0, "ok")
	})
	t.Run("no server", func(t *testing.T) {
		t.Setenv("ECHO_ADDR", "127.0.0.1")
		_, port, _ := net.SplitHostPort(closedPort(t, "tcp"))
		t.Setenv("ECHO_HTTP_PORT", port)
		check(t, 1, "")
	})
	if code, _, stderr := client(t, nil, "set-health", "maybe"); code != 1 || !strings.Contains(stderr, "want ok or fail") {
		t.Errorf("set-health maybe: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := client(t, nil, "sleep", "10ms"); code != 0 {
		t.Errorf("sleep 10ms: exit %d, stderr %q", code, stderr)
	}
}

func TestShellWords(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    []string
		wantErr bool
	}{
		{[]string{"-c", "/echo health"}, []string{"/echo", "health"}, false},
		{[]string{"-c", "  /echo   get  http://x/ "}, []string{"/echo", "get", "http://x/"}, false},
		{[]string{"-c", " "}, nil, false},
		{[]string{"-c"}, nil, true},
		{[]string{"/echo", "health"}, nil, true},
	} {
		got, err := shellWords(tc.args)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("shellWords(%q) = %q, %v; want %q (error %v)", tc.args, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestShell runs the binary as sh, as a CMD-SHELL health check does: it
// executes the command's program (here itself, in client mode).
func TestShell(t *testing.T) {
	sh := filepath.Join(t.TempDir(), "sh")
	if err := os.Symlink(os.Args[0], sh); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		command string
		code    int
		stdout  string
	}{
		{os.Args[0] + " resolve 127.0.0.9", 0, "127.0.0.9\n"},
		{os.Args[0] + " resolve nope..", 1, ""},
		{"/nonexistent/check", 127, ""},
		{"", 0, ""},
	} {
		code, stdout := runEcho(t, sh, "-c", tc.command)
		if code != tc.code || stdout != tc.stdout {
			t.Errorf("sh -c %q: exit %d, stdout %q; want exit %d, stdout %q", tc.command, code, stdout, tc.code, tc.stdout)
		}
	}
}

func TestClientUsage(t *testing.T) {
	for _, args := range [][]string{{"get"}, {"resolve", "a", "b"}, {"udp", "127.0.0.1:1"}, {"health", "x"}, {"sleep"}} {
		if code, _, stderr := client(t, nil, args...); code != 2 || !strings.Contains(stderr, "usage") {
			t.Errorf("%q: exit %d, stderr %q; want 2 with usage", args, code, stderr)
		}
	}
}

// TestClientCommandLine runs the client mode as e2e tests do: as the
// binary, through main.
func TestClientCommandLine(t *testing.T) {
	s := startServer(t, nil)
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
	}{
		{[]string{"get", "http://" + s.http + "/healthz"}, 0, "ok"},
		{[]string{"resolve", "127.0.0.9"}, 0, "127.0.0.9\n"},
		{[]string{"resolve", "not a name"}, 1, ""},
		{[]string{"udp", s.udp}, 2, ""},
	} {
		code, stdout := runEcho(t, os.Args[0], tc.args...)
		if code != tc.code || stdout != tc.stdout {
			t.Errorf("%q: exit %d, stdout %q; want exit %d, stdout %q", tc.args, code, stdout, tc.code, tc.stdout)
		}
	}
}

// runEcho runs the test binary as the echo command (through path, which
// may be a link to it) and returns its exit status and stdout.
func runEcho(t *testing.T, path string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), asServerEnv+"=1")
	var stdout strings.Builder
	cmd.Stdout = &stdout
	err := cmd.Run()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		return ee.ExitCode(), stdout.String()
	} else if err != nil {
		t.Fatalf("%s %q: %v", path, args, err)
	}
	return 0, stdout.String()
}
