package testimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// LoadConfig is a run of many short requests against echo servers.
type LoadConfig struct {
	// Target is an http:// URL (GET /json on a new connection each time),
	// or udp://HOST:PORT (one datagram, one reply).
	Target string
	// Requests is how many to send in all; Concurrency how many at once.
	Requests    int
	Concurrency int
	// Timeout bounds one request.
	Timeout time.Duration
	// Stop, when not nil, ends the run once it is closed: no request is
	// sent after that, and those under way finish and count. Requests
	// then bounds the run only if positive: a test loads a service for as
	// long as a change of it takes.
	Stop <-chan struct{}
	// Dial makes the connections, a net.Dialer's by default: a test may
	// dial from inside a network namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// LoadReport says what a load run saw: which tasks and which client
// addresses (as the tasks saw them) answered, the failures, and the
// latencies of the successful requests.
type LoadReport struct {
	OK     int            `json:"ok"`
	Failed int            `json:"failed"`
	Errors []string       `json:"errors,omitempty"` // the first few
	Tasks  map[string]int `json:"tasks"`            // by task name (SHOAL_TASK_NAME), or hostname
	// Remotes counts the client addresses (without port) the tasks saw.
	Remotes map[string]int `json:"remotes"`
	// Latency percentiles of successful requests.
	P50     time.Duration `json:"p50"`
	P99     time.Duration `json:"p99"`
	Elapsed time.Duration `json:"elapsed"`
}

// maxErrors is how many error messages a report keeps.
const maxErrors = 5

// Load runs cfg and reports; an error means the run could not be made at all.
func Load(ctx context.Context, cfg LoadConfig) (LoadReport, error) {
	switch {
	case cfg.Requests > 0:
		cfg.Concurrency = max(1, min(cfg.Concurrency, cfg.Requests))
	case cfg.Stop == nil:
		return LoadReport{}, errors.New("load: requests must be positive")
	default:
		cfg.Concurrency = max(1, cfg.Concurrency)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: cfg.Timeout}
		cfg.Dial = d.DialContext
	}
	var one func(context.Context) (report, error)
	switch {
	case strings.HasPrefix(cfg.Target, "http://"):
		client := &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{DisableKeepAlives: true, DialContext: cfg.Dial}}
		url := strings.TrimSuffix(cfg.Target, "/") + "/json"
		one = func(ctx context.Context) (report, error) { return getReport(ctx, client, url) }
	case strings.HasPrefix(cfg.Target, "udp://"):
		addr := strings.TrimPrefix(cfg.Target, "udp://")
		one = func(ctx context.Context) (report, error) { return udpReport(ctx, cfg.Dial, addr, cfg.Timeout) }
	default:
		return LoadReport{}, fmt.Errorf("load: target %q: want http://HOST:PORT or udp://HOST:PORT", cfg.Target)
	}
	rep := LoadReport{Tasks: map[string]int{}, Remotes: map[string]int{}}
	var (
		mu        sync.Mutex
		latencies []time.Duration
		wg        sync.WaitGroup
	)
	jobs := make(chan struct{})
	start := time.Now()
	for range cfg.Concurrency {
		wg.Go(func() {
			for range jobs {
				t0 := time.Now()
				r, err := one(ctx)
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					rep.Failed++
					if len(rep.Errors) < maxErrors {
						rep.Errors = append(rep.Errors, err.Error())
					}
				} else {
					rep.OK++
					latencies = append(latencies, d)
					name := r.Task
					if name == "" {
						name = r.Hostname
					}
					rep.Tasks[name]++
					host, _, err := net.SplitHostPort(r.Remote)
					if err != nil {
						host = r.Remote
					}
					rep.Remotes[host]++
				}
				mu.Unlock()
			}
		})
	}
send:
	for i := 0; cfg.Requests <= 0 || i < cfg.Requests; i++ {
		select {
		case <-cfg.Stop:
			break send
		default:
		}
		select {
		case <-ctx.Done():
			break send
		case <-cfg.Stop: // never, when nil
			break send
		case jobs <- struct{}{}:
		}
	}
	close(jobs)
	wg.Wait()
	rep.Elapsed = time.Since(start)
	slices.Sort(latencies)
	if n := len(latencies); n > 0 {
		rep.P50 = latencies[n/2]
		rep.P99 = latencies[min(n-1, n*99/100)]
	}
	return rep, ctx.Err()
}

func getReport(ctx context.Context, client *http.Client, url string) (report, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return report{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return report{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return report{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var r report
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return report{}, fmt.Errorf("GET %s: decode: %w", url, err)
	}
	return r, nil
}

// report is the part of the echo server's answer a load run reads.
type report struct {
	Hostname string `json:"hostname"`
	Task     string `json:"task"`
	Remote   string `json:"remote"`
}

// udpReport sends one datagram and parses the echo server's reply, which
// starts "hostname=H task=T remote=ADDR " (see the echo server).
func udpReport(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), addr string, timeout time.Duration) (report, error) {
	c, err := dial(ctx, "udp", addr)
	if err != nil {
		return report{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return report{}, err
	}
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		return report{}, fmt.Errorf("udp %s: %w", addr, err)
	}
	var r report
	for _, field := range strings.Fields(string(buf[:n])) {
		k, v, _ := strings.Cut(field, "=")
		switch k {
		case "hostname":
			r.Hostname = v
		case "task":
			r.Task = v
		case "remote":
			r.Remote = v
		}
	}
	if r.Hostname == "" {
		return report{}, fmt.Errorf("udp %s: unexpected reply %q", addr, buf[:n])
	}
	return r, nil
}

// Stream sends size bytes over one TCP connection to an echo server's
// TCP echo port and reads them back, and returns how long that took.
func Stream(ctx context.Context, addr string, size int64) (time.Duration, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	start := time.Now()
	// The greeting line comes first; then the echo of what we send.
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		var sent int64
		for sent < size {
			n := int64(len(buf))
			if size-sent < n {
				n = size - sent
			}
			if _, err := c.Write(buf[:n]); err != nil {
				errc <- err
				return
			}
			sent += n
		}
		errc <- nil
	}()
	var greeting [1]byte
	for greeting[0] != '\n' {
		if _, err := io.ReadFull(c, greeting[:]); err != nil {
			return 0, fmt.Errorf("stream %s: read greeting: %w", addr, err)
		}
	}
	if _, err := io.CopyN(io.Discard, c, size); err != nil {
		return 0, fmt.Errorf("stream %s: read echo: %w", addr, err)
	}
	if err := <-errc; err != nil {
		return 0, fmt.Errorf("stream %s: write: %w", addr, err)
	}
	return time.Since(start), nil
}
