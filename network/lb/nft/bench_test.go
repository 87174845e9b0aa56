package nft

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/lbtest"
)

// benchState is n published frontends with m backends each.
func benchState(n, m int) lb.State {
	var s lb.State
	for i := range n {
		f := lb.Frontend{Name: fmt.Sprintf("svc:s%04d:%d/tcp", i, 20000+i), Protocol: lb.TCP, Port: uint16(20000 + i), Masquerade: true}
		for j := range m {
			f.Backends = append(f.Backends, lb.Backend{Addr: netip.AddrFrom4([4]byte{10, 232, byte(i / 256), byte(i % 256)}), Port: uint16(1000 + j)})
		}
		s.Frontends = append(s.Frontends, f)
	}
	return s
}

func reportMS(b *testing.B) {
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/op")
}

// BenchmarkProgram1000x10 programs 1,000 frontends × 10 backends into an
// empty namespace (goal: under 1 s).
func BenchmarkProgram1000x10(b *testing.B) {
	lbtest.RequireRoot(b)
	_, ns := lbtest.NewNetNS(b)
	s := benchState(1000, 10)
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		bal, err := New(WithNetNS(ns), WithTable("shoal-lb-bench"))
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := bal.Apply(ctx, s); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := bal.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportMS(b)
}

// BenchmarkOneChange1000 applies one backend change with 1,000 frontends ×
// 10 backends present (goal: under 10 ms).
func BenchmarkOneChange1000(b *testing.B) {
	lbtest.RequireRoot(b)
	_, ns := lbtest.NewNetNS(b)
	s := benchState(1000, 10)
	ctx := context.Background()
	bal, err := New(WithNetNS(ns), WithTable("shoal-lb-bench"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bal.Close() })
	if err := bal.Apply(ctx, s); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		f := &s.Frontends[i%len(s.Frontends)]
		// Alternately replace and restore one backend's port.
		f.Backends[0].Port ^= 0x8000
		if err := bal.Apply(ctx, s); err != nil {
			b.Fatal(err)
		}
		i++
	}
	reportMS(b)
}
