package ipvs

import (
	"fmt"
	"slices"
	"testing"

	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/lbtest"
)

// TestConformance runs the suite every backend passes against the fakes: the
// kernel run waits for a kernel with IPVS.
func TestConformance(t *testing.T) {
	lbtest.Run(t, func(t *testing.T) lbtest.Instance {
		f, m := newFake(), &fakeMarker{}
		b := New(f, m)
		t.Cleanup(func() { b.Close() })
		return lbtest.Instance{
			Balancer: b,
			Read:     func(t testing.TB) map[string]lbtest.Programmed { return readFakes(f, m) },
			FailNext: func() { f.failOn = "NewDestination" },
			Tamper: func(testing.TB) {
				for mark := range f.services {
					f.services[mark] = []string{}
				}
			},
		}
	})
}

// readFakes reads back what the fakes hold. An IPVS service no mark leads to
// is reported too, under a name of its own, so a leftover fails the suite.
func readFakes(f *fakeIPVS, m *fakeMarker) map[string]lbtest.Programmed {
	out := map[string]lbtest.Programmed{}
	marked := map[uint32]bool{}
	for _, mk := range m.marks {
		marked[mk.Mark] = true
		ds, ok := f.services[mk.Mark]
		if !ok {
			ds = []string{"no IPVS service for mark " + fmt.Sprint(mk.Mark)}
		}
		out[mk.Frontend.Name] = lbtest.Programmed{
			Key:        lb.Key(mk.Frontend),
			Backends:   slices.Sorted(slices.Values(ds)),
			Masquerade: mk.Frontend.Masquerade,
		}
	}
	for mark, ds := range f.services {
		if !marked[mark] {
			out[fmt.Sprintf("unmarked IPVS service %#x", mark)] = lbtest.Programmed{Backends: ds}
		}
	}
	return out
}
