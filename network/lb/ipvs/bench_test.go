package ipvs

import (
	"context"
	"testing"

	"github.com/shoal-project/shoal/network/lb/lbtest"
)

// The IPVS benchmarks program the same state as the nft backend's
// (lbtest.BenchState) under the same names, both in ms/op, so that a run of
// both test binaries on one kernel gives the ratio (benchstat -ignore pkg
// nft.txt ipvs.txt). They need a kernel with IPVS (the VM tier).

// BenchmarkProgram1000x10 programs 1,000 frontends × 10 backends into an
// empty namespace: 1,000 IPVS services, 10,000 real servers and the
// marker's table.
func BenchmarkProgram1000x10(b *testing.B) {
	lbtest.RequireIPVS(b, Available())
	name, _ := lbtest.NewNetNS(b)
	s := lbtest.BenchState(1000, 10)
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		bal, err := NewKernel("/run/netns/"+name, WithMarkTable("shoal-ipvs-bench"))
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
// 10 backends present: a new real server, and the old one quiesced (or
// brought back), as a task replaced behind a service costs.
func BenchmarkOneChange1000(b *testing.B) {
	lbtest.RequireIPVS(b, Available())
	name, _ := lbtest.NewNetNS(b)
	s := lbtest.BenchState(1000, 10)
	ctx := context.Background()
	bal, err := NewKernel("/run/netns/"+name, WithMarkTable("shoal-ipvs-bench"))
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
