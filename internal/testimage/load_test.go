package testimage

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoadHTTP counts the tasks and client addresses a fake echo server
// reports, and the failures of a server that errs every third request.
func TestLoadHTTP(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		if i%3 == 0 {
			http.Error(w, "nope", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, `{"hostname":"h","task":"web.%d","remote":%q}`, i%2, r.RemoteAddr)
	}))
	defer srv.Close()
	rep, err := Load(t.Context(), LoadConfig{Target: srv.URL, Requests: 30, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK != 20 || rep.Failed != 10 {
		t.Errorf("ok=%d failed=%d, want 20 and 10 (%v)", rep.OK, rep.Failed, rep.Errors)
	}
	if len(rep.Tasks) != 2 || rep.Tasks["web.0"]+rep.Tasks["web.1"] != 20 {
		t.Errorf("tasks = %v, want web.0 and web.1 summing to 20", rep.Tasks)
	}
	if rep.Remotes["127.0.0.1"] != 20 {
		t.Errorf("remotes = %v, want 127.0.0.1 20 times", rep.Remotes)
	}
	if rep.P50 <= 0 || rep.P99 < rep.P50 {
		t.Errorf("p50 %v p99 %v", rep.P50, rep.P99)
	}
}

// TestLoadUntilStopped runs without a count until Stop is closed, every
// connection made by the given dialer, and lets the requests under way
// finish: none fails for being stopped.
func TestLoadUntilStopped(t *testing.T) {
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond)
		served.Add(1)
		fmt.Fprintf(w, `{"hostname":"h","task":"web.1","remote":%q}`, r.RemoteAddr)
	}))
	defer srv.Close()
	var dials atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	stop := make(chan struct{})
	time.AfterFunc(200*time.Millisecond, func() { close(stop) })
	rep, err := Load(t.Context(), LoadConfig{Target: srv.URL, Concurrency: 4, Stop: stop, Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK == 0 || rep.Failed != 0 || int64(rep.OK) != served.Load() {
		t.Errorf("ok=%d failed=%d served=%d, want every request served and none failed: %v", rep.OK, rep.Failed, served.Load(), rep.Errors)
	}
	if dials.Load() != int64(rep.OK) {
		t.Errorf("%d connections through Dial for %d requests", dials.Load(), rep.OK)
	}
	if _, err := Load(t.Context(), LoadConfig{Target: srv.URL}); err == nil {
		t.Error("a run with neither a count nor Stop was accepted")
	}
}

// TestLoadUDP parses the echo server's datagram replies, and counts a
// silent server as failures.
func TestLoadUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(fmt.Appendf(nil, "hostname=udp1 remote=%s %s", from, buf[:n]), from)
		}
	}()
	rep, err := Load(t.Context(), LoadConfig{Target: "udp://" + pc.LocalAddr().String(), Requests: 5})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK != 5 || rep.Tasks["udp1"] != 5 || rep.Remotes["127.0.0.1"] != 5 {
		t.Errorf("report %+v, want 5 answers from udp1 seeing 127.0.0.1", rep)
	}
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	rep, _ = Load(t.Context(), LoadConfig{Target: "udp://" + silent.LocalAddr().String(), Requests: 2, Timeout: 100 * time.Millisecond})
	if rep.OK != 0 || rep.Failed != 2 {
		t.Errorf("silent server: ok=%d failed=%d, want 0 and 2", rep.OK, rep.Failed)
	}
	if _, err := Load(t.Context(), LoadConfig{Target: "ftp://x", Requests: 1}); err == nil || !strings.Contains(err.Error(), "ftp://x") {
		t.Errorf("bad target: err = %v, want one naming it", err)
	}
}

// TestStream sends bytes through a TCP echo server with a greeting line.
func TestStream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "hostname=x\n")
				io.Copy(c, c)
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	d, err := Stream(ctx, ln.Addr().String(), 8<<20)
	if err != nil || d <= 0 {
		t.Fatalf("stream: %v, %v", d, err)
	}
}
