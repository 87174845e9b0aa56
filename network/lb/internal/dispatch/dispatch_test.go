package dispatch

import (
	"net/netip"
	"testing"

	"github.com/google/nftables"
)

func TestDecodeIsElementsInverse(t *testing.T) {
	m := NewMaps(&nftables.Table{Name: "t"}, nftables.TypeMark)
	tests := []struct {
		proto uint8
		port  uint16
		vip   string
		set   string
	}{
		{6, 8080, "", SetPublished},
		{17, 53, "", SetPublished},
		{6, 80, "10.1.2.3", SetVIP4},
		{17, 65535, "fd00::9", SetVIP6},
		{6, 0, "10.1.2.3", SetVIP4Any},
		{17, 0, "fd00::9", SetVIP6Any},
	}
	for _, tc := range tests {
		var vip netip.Addr
		if tc.vip != "" {
			vip = netip.MustParseAddr(tc.vip)
		}
		s, key := m.Element(tc.proto, tc.port, vip)
		if s.Name != tc.set {
			t.Errorf("Element(%d, %d, %v) in map %s, want %s", tc.proto, tc.port, vip, s.Name, tc.set)
		}
		proto, port, gotVIP, err := Decode(s.Name, key)
		if err != nil || proto != tc.proto || port != tc.port || gotVIP != vip {
			t.Errorf("Decode(%s, %x) = %d, %d, %v, %v; want %d, %d, %v", s.Name, key, proto, port, gotVIP, err, tc.proto, tc.port, vip)
		}
	}
	if _, _, _, err := Decode(SetVIP4, []byte{1, 2, 3}); err == nil {
		t.Error("Decode of a short key: nil error")
	}
	if _, _, _, err := Decode("hairpin4", make([]byte, 8)); err == nil {
		t.Error("Decode of another map's key: nil error")
	}
}
