package testcluster

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// InNetns runs fn on an OS thread that has joined the network namespace of
// process pid. The thread is thrown away afterwards, so no other goroutine
// ever runs in that namespace.
func InNetns(pid uint32, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with this goroutine.
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			errc <- fmt.Errorf("open netns of pid %d: %w", pid, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("join netns of pid %d: %w", pid, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// HTTPGetInNetns fetches http://127.0.0.1:port/path from inside the
// network namespace of pid: the task's own loopback, so test traffic never
// leaves namespaces the test made.
func HTTPGetInNetns(pid uint32, port int, path string) (string, error) {
	var body string
	err := InNetns(pid, func() error {
		// Dial from this thread: the transport's dialer would run on
		// another goroutine and thus in the host's namespace.
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: task\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		body = string(b)
		return nil
	})
	return body, err
}
