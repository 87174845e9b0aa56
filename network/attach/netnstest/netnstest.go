// Package netnstest gives kernel tests of the network packages throwaway
// named network namespaces, veth links between them, and a TCP echo helper
// run as a child process inside a namespace, so no thread of the test
// binary ever enters one. Everything it creates is removed in t.Cleanup.
package netnstest

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const (
	helperEnv = "SHOAL_NETNSTEST_HELPER"
	// DialTimeout bounds one connection attempt of the dial helper: long
	// enough for a first ARP exchange on a loaded machine, short enough that
	// an expected failure does not slow the suite.
	DialTimeout = 3 * time.Second
	// readyTimeout bounds the wait for a listener to report it is bound.
	readyTimeout = 30 * time.Second
)

// Main runs the test binary as a helper when started as one (see Listen and
// Dial), else the tests. Call it from TestMain.
func Main(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode, os.Getenv(helperEnv+"_ADDR")))
	}
	os.Exit(m.Run())
}

// RequireKernel skips t unless it runs as root with the ip tool.
func RequireKernel(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip tool (iproute2)")
	}
}

// NS is a named network namespace.
type NS struct {
	Name string
	Path string
}

// New creates a namespace named shoaltest-<label>-<random>, with loopback
// up, deleted at cleanup (and with it every link inside).
func New(t testing.TB, label string) *NS {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "shoaltest-" + label + "-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns := &NS{Name: name, Path: "/run/netns/" + name}
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command inside the namespace.
func (ns *NS) Run(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), ns.Name, err, out)
	}
	return string(out), nil
}

// MustRun runs a command inside the namespace and fails t if it fails.
func (ns *NS) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ns.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Link connects a and b with a veth pair named aName in a and bName in b,
// with the given addresses (CIDR, may be empty), both up.
func Link(t testing.TB, a *NS, aName, aAddr string, b *NS, bName, bAddr string) {
	t.Helper()
	if out, err := exec.Command("ip", "link", "add", aName, "netns", a.Name, "type", "veth",
		"peer", "name", bName, "netns", b.Name).CombinedOutput(); err != nil {
		t.Fatalf("veth %s/%s between %s and %s: %v: %s", aName, bName, a.Name, b.Name, err, out)
	}
	for _, e := range []struct {
		ns         *NS
		name, addr string
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		if e.addr != "" {
			e.ns.MustRun(t, "ip", "addr", "add", e.addr, "dev", e.name)
		}
		e.ns.MustRun(t, "ip", "link", "set", e.name, "up")
	}
}

// Listen starts a TCP echo server on addr (host:port) inside ns and
// returns once it is listening; it is killed at cleanup.
func Listen(t testing.TB, ns *NS, addr string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, exe)
	cmd.Env = append(os.Environ(), helperEnv+"=listen", helperEnv+"_ADDR="+addr)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start listener in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("listener said %q", line)
		}
		ready <- err
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("listener on %s in %s: %v", addr, ns.Name, err)
		}
	case <-time.After(readyTimeout):
		t.Fatalf("listener on %s in %s not ready after %s", addr, ns.Name, readyTimeout)
	}
}

// Dial connects from inside ns to addr (host:port), sends a line and waits
// for its echo. The error says why it failed.
func Dial(ns *NS, addr string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, exe)
	cmd.Env = append(os.Environ(), helperEnv+"=dial", helperEnv+"_ADDR="+addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("dial %s from %s: %w: %s", addr, ns.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func helper(mode, addr string) int {
	switch mode {
	case "listen":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("ready")
		for {
			c, err := l.Accept()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	case "dial":
		c, err := net.DialTimeout("tcp", addr, DialTimeout)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(DialTimeout))
		msg := "hello over the overlay\n"
		if _, err := io.WriteString(c, msg); err != nil {
			fmt.Println(err)
			return 1
		}
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || got != msg {
			fmt.Printf("echo %q, %v\n", got, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
	return 2
}
