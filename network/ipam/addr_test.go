package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseSubnet(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "10.20.0.0/24", want: "10.20.0.0/24"},
		{in: " 10.0.0.0/8 ", want: "10.0.0.0/8"},
		{in: "192.168.1.0/30", want: "192.168.1.0/30"},
		{in: "10.20.0.5/24", wantErr: "did you mean 10.20.0.0/24"},
		{in: "10.20.0.0/31", wantErr: "too small"},
		{in: "fd00::/64", wantErr: "only IPv4"},
		{in: "10.20.0.0", wantErr: "parse subnet"},
		{in: "", wantErr: "parse subnet"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSubnet(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSubnet(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("ParseSubnet(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestOverlaps(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"10.0.0.0/8", "10.20.0.0/24", true},
		{"10.20.0.0/24", "10.0.0.0/8", true},
		{"10.20.0.0/24", "10.20.1.0/24", false},
		{"10.20.0.0/23", "10.20.1.0/24", true},
		{"10.20.0.0/24", "10.20.0.0/24", true},
		{"10.20.0.0/24", "fd00::/8", false},
		{"192.168.0.0/30", "192.168.0.4/30", false},
	}
	for _, tt := range tests {
		a, b := netip.MustParsePrefix(tt.a), netip.MustParsePrefix(tt.b)
		if got := Overlaps(a, b); got != tt.want {
			t.Errorf("Overlaps(%s, %s) = %v, want %v", a, b, got, tt.want)
		}
	}
	if Overlaps(netip.Prefix{}, netip.MustParsePrefix("0.0.0.0/0")) {
		t.Error("an invalid prefix overlaps 0.0.0.0/0")
	}
}

func mustAlloc(t *testing.T, subnet, gw string) *Allocator {
	t.Helper()
	var g netip.Addr
	if gw != "" {
		g = netip.MustParseAddr(gw)
	}
	a, err := NewAllocator(netip.MustParsePrefix(subnet), g)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestNewAllocator(t *testing.T) {
	tests := []struct {
		subnet, gw string
		wantGW     string
		wantErr    string
	}{
		{subnet: "10.0.0.0/24", wantGW: "10.0.0.1"},
		{subnet: "10.0.0.0/24", gw: "10.0.0.254", wantGW: "10.0.0.254"},
		{subnet: "10.0.0.0/24", gw: "10.0.1.1", wantErr: "not in subnet"},
		{subnet: "10.0.0.0/24", gw: "10.0.0.255", wantErr: "broadcast"},
		{subnet: "10.0.0.0/24", gw: "10.0.0.0", wantErr: "network or broadcast"},
		{subnet: "10.0.0.1/24", wantErr: "host bits"},
	}
	for _, tt := range tests {
		t.Run(tt.subnet+"/"+tt.gw, func(t *testing.T) {
			var g netip.Addr
			if tt.gw != "" {
				g = netip.MustParseAddr(tt.gw)
			}
			a, err := NewAllocator(netip.MustParsePrefix(tt.subnet), g)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.Gateway().String() != tt.wantGW {
				t.Fatalf("gateway %s, want %s", a.Gateway(), tt.wantGW)
			}
		})
	}
}

func TestAllocatorAllocatesEveryHostOnceThenExhausts(t *testing.T) {
	a := mustAlloc(t, "10.9.0.0/29", "") // hosts .1-.6, .1 is the gateway
	var got []string
	for range 5 {
		addr, err := a.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, addr.String())
	}
	want := "10.9.0.2 10.9.0.3 10.9.0.4 10.9.0.5 10.9.0.6"
	if strings.Join(got, " ") != want {
		t.Fatalf("allocated %v, want %s", got, want)
	}
	_, err := a.Allocate()
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "10.9.0.0/29") {
		t.Fatalf("exhausted allocator: err = %v, want ErrExhausted naming the subnet", err)
	}
	if err := a.Release(netip.MustParseAddr("10.9.0.4")); err != nil {
		t.Fatal(err)
	}
	addr, err := a.Allocate()
	if err != nil || addr.String() != "10.9.0.4" {
		t.Fatalf("after release got %v, %v; want 10.9.0.4", addr, err)
	}
}

func TestAllocatorDelaysReuse(t *testing.T) {
	a := mustAlloc(t, "10.9.0.0/24", "")
	first, _ := a.Allocate()
	if err := a.Release(first); err != nil {
		t.Fatal(err)
	}
	next, _ := a.Allocate()
	if next == first {
		t.Fatalf("released %s was handed out again at once", first)
	}
}

func TestAllocatorSpecificAndRelease(t *testing.T) {
	a := mustAlloc(t, "10.9.0.0/24", "")
	tests := []struct {
		op      string
		addr    string
		wantErr error
	}{
		{"specific", "10.9.0.7", nil},
		{"specific", "10.9.0.7", ErrInUse},
		{"specific", "10.9.0.1", ErrReserved},
		{"specific", "10.9.0.255", ErrReserved},
		{"specific", "10.9.1.7", ErrNotInSubnet},
		{"release", "10.9.0.7", nil},
		{"release", "10.9.0.7", ErrNotAllocated},
		{"release", "10.9.0.1", ErrReserved},
		{"release", "10.8.0.1", ErrNotInSubnet},
	}
	for _, tt := range tests {
		addr := netip.MustParseAddr(tt.addr)
		var err error
		if tt.op == "specific" {
			err = a.AllocateSpecific(addr)
		} else {
			err = a.Release(addr)
		}
		if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
			t.Errorf("%s %s: err = %v, want %v", tt.op, tt.addr, err, tt.wantErr)
		}
	}
}

func TestAllocatorRestore(t *testing.T) {
	a := mustAlloc(t, "10.9.0.0/29", "")
	used := []netip.Addr{
		netip.MustParseAddr("10.9.0.1"), // the gateway: accepted
		netip.MustParseAddr("10.9.0.2"),
		netip.MustParseAddr("10.9.0.3"),
		netip.MustParseAddr("10.9.0.3"), // twice
		netip.MustParseAddr("10.9.1.3"), // elsewhere
	}
	err := a.Restore(used)
	if !errors.Is(err, ErrInUse) || !errors.Is(err, ErrNotInSubnet) {
		t.Fatalf("Restore err = %v, want the duplicate and the foreign address named", err)
	}
	if a.InUse() != 3 {
		t.Fatalf("InUse = %d after restore, want 3 (gateway, .2, .3)", a.InUse())
	}
	addr, err := a.Allocate()
	if err != nil || addr.String() != "10.9.0.4" {
		t.Fatalf("Allocate after restore = %v, %v; want 10.9.0.4", addr, err)
	}
}
