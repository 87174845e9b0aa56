package ipam

import (
	"net/netip"
	"testing"
)

func FuzzParseSubnet(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "10.20.0.5/24", "fd00::/64", "1.2.3.4/33", "", "0.0.0.0/0", "10.0.0.0/30"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseSubnet(s)
		if err != nil {
			return
		}
		if !p.Addr().Is4() || p.Masked() != p || p.Bits() > MaxPrefixBits {
			t.Fatalf("ParseSubnet(%q) accepted %s", s, p)
		}
		again, err := ParseSubnet(p.String())
		if err != nil || again != p {
			t.Fatalf("%s does not round-trip: %v, %v", p, again, err)
		}
		if !Overlaps(p, p) {
			t.Fatalf("%s does not overlap itself", p)
		}
		if _, err := NewAllocator(p, netip.Addr{}); err != nil {
			t.Fatalf("accepted subnet %s refused by NewAllocator: %v", p, err)
		}
	})
}

// FuzzOverlaps checks Overlaps against its definition: two aligned prefixes
// share an address exactly when one contains the other's first address.
func FuzzOverlaps(f *testing.F) {
	f.Add(uint32(0x0a000000), uint8(8), uint32(0x0a140000), uint8(24))
	f.Add(uint32(0x0a140000), uint8(24), uint32(0x0a140100), uint8(24))
	f.Fuzz(func(t *testing.T, a uint32, abits uint8, b uint32, bbits uint8) {
		pa := netip.PrefixFrom(fromUint(a), int(abits%33)).Masked()
		pb := netip.PrefixFrom(fromUint(b), int(bbits%33)).Masked()
		want := pa.Contains(pb.Addr()) || pb.Contains(pa.Addr())
		if got := Overlaps(pa, pb); got != want {
			t.Fatalf("Overlaps(%s, %s) = %v, want %v", pa, pb, got, want)
		}
		if Overlaps(pa, pb) != Overlaps(pb, pa) {
			t.Fatalf("Overlaps(%s, %s) is not symmetric", pa, pb)
		}
	})
}
