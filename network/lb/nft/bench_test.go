package nft

import (
	"context"
	"testing"

	"github.com/shoal-project/shoal/network/lb/lbtest"
)

// BenchmarkProgram1000x10 programs 1,000 frontends × 10 backends into an
// empty namespace (goal: under 1 s).
func BenchmarkProgram1000x10(b *testing.B) {
	lbtest.RequireRoot(b)
	_, ns := lbtest.NewNetNS(b)
	s := lbtest.BenchState(1000, 10)
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
	lbtest.ReportMS(b)
}

// BenchmarkOneChange1000 applies one backend change with 1,000 frontends ×
// 10 backends present (goal: under 10 ms).
func BenchmarkOneChange1000(b *testing.B) {
	lbtest.RequireRoot(b)
	_, ns := lbtest.NewNetNS(b)
	s := lbtest.BenchState(1000, 10)
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
	lbtest.ReportMS(b)
}
