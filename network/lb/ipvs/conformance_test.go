package ipvs

import (
	"fmt"
	"testing"

	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/lbtest"
)

// TestConformance runs the suite every backend passes against the fakes: the
// kernel run waits for a kernel with IPVS.
func TestConformance(t *testing.T) {
	lbtest.Run(t, func(t *testing.T) lbtest.Instance {
		f, m := newFake(), &fakeMarker{}
		b := newTestBalancer(f, m)
		t.Cleanup(func() { b.Close() })
		return lbtest.Instance{
			Balancer: b,
			Read:     func(t testing.TB) map[string]lbtest.Programmed { return readFakes(f, m) },
			FailNext: func() { f.failOn = "NewDestination" },
			Tamper: func(testing.TB) {
				for _, svc := range f.services {
					svc.dests = nil
				}
			},
		}
	})
}

// readFakes reads back what the fakes hold: per marked frontend the real
// servers that get new connections (quiesced ones are on their way out,
// like the nft backend's conntrack entries of removed backends). An IPVS
// service no mark leads to is reported too, under a name of its own, so a
// leftover fails the suite.
func readFakes(f *fakeIPVS, m *fakeMarker) map[string]lbtest.Programmed {
	out := map[string]lbtest.Programmed{}
	marked := map[uint32]bool{}
	for _, mk := range m.marks {
		marked[mk.Mark] = true
		ds, ok := f.serving(mk.Mark)
		if !ok {
			ds = []string{"no IPVS service for mark " + fmt.Sprint(mk.Mark)}
		}
		out[mk.Frontend.Name] = lbtest.Programmed{Key: lb.Key(mk.Frontend), Backends: ds, Masquerade: mk.Frontend.Masquerade}
	}
	for k := range f.services {
		if !marked[k.mark] {
			ds, _ := f.serving(k.mark)
			out[fmt.Sprintf("unmarked IPVS service %#x (family %d)", k.mark, k.family)] = lbtest.Programmed{Backends: ds}
		}
	}
	return out
}
