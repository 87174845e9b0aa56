package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
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
		{"defaults", nil, nil, config{httpPort: 80, tcpPort: 7, udpPort: 80, crashAfter: -1, exitCode: 3}, false},
		{"udp follows http env", map[string]string{"ECHO_HTTP_PORT": "8080"}, nil,
			config{httpPort: 8080, tcpPort: 7, udpPort: 8080, crashAfter: -1, exitCode: 3}, false},
		{"udp follows http flag", map[string]string{"ECHO_HTTP_PORT": "8080"}, []string{"--http-port", "9000"},
			config{httpPort: 9000, tcpPort: 7, udpPort: 9000, crashAfter: -1, exitCode: 3}, false},
		{"explicit udp", map[string]string{"ECHO_UDP_PORT": "53", "ECHO_TCP_PORT": "9"}, nil,
			config{httpPort: 80, tcpPort: 9, udpPort: 53, crashAfter: -1, exitCode: 3}, false},
		{"crash env", map[string]string{"ECHO_CRASH_AFTER": "200ms", "ECHO_EXIT_CODE": "4"}, nil,
			config{httpPort: 80, tcpPort: 7, udpPort: 80, crashAfter: 200 * time.Millisecond, exitCode: 4}, false},
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
