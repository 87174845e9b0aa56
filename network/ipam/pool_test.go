package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestPoolAllocateSkipsExistingNetworks(t *testing.T) {
	p, err := NewPool(netip.MustParsePrefix("10.0.0.0/16"), 24)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"10.0.0.0/24", "10.0.1.128/25", "10.0.2.0/23", "172.16.0.0/12"} {
		if err := p.Reserve(netip.MustParsePrefix(s)); err != nil {
			t.Fatalf("Reserve(%s): %v", s, err)
		}
	}
	var got []string
	for range 3 {
		s, err := p.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, s.String())
	}
	if want := "10.0.4.0/24 10.0.5.0/24 10.0.6.0/24"; strings.Join(got, " ") != want {
		t.Fatalf("allocated %v, want %s", got, want)
	}
	p.Release(netip.MustParsePrefix("10.0.0.0/24"))
	if s, _ := p.Allocate(); s.String() != "10.0.0.0/24" {
		t.Fatalf("after release got %s, want 10.0.0.0/24", s)
	}
}

func TestPoolReserveRefusesOverlap(t *testing.T) {
	p, _ := NewPool(DefaultPoolBase, DefaultPoolSize)
	if err := p.Reserve(netip.MustParsePrefix("10.20.0.0/16")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		subnet  string
		wantErr string
	}{
		{"10.20.5.0/24", "overlaps an existing network 10.20.0.0/16"},
		{"10.0.0.0/8", "overlaps an existing network 10.20.0.0/16"},
		{"10.20.0.0/16", "already in use"},
		{"10.20.0.1/24", "host bits"},
		{"10.21.0.0/24", ""},
	}
	for _, tt := range tests {
		err := p.Reserve(netip.MustParsePrefix(tt.subnet))
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("Reserve(%s): %v", tt.subnet, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Reserve(%s) = %v, want error containing %q", tt.subnet, err, tt.wantErr)
		}
	}
}

func TestPoolExhausted(t *testing.T) {
	p, _ := NewPool(netip.MustParsePrefix("10.1.0.0/23"), 24)
	for range 2 {
		if _, err := p.Allocate(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Allocate(); !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "10.1.0.0/23") {
		t.Fatalf("err = %v, want ErrExhausted naming the pool", err)
	}
}

func TestNewPoolRefusesBadSizes(t *testing.T) {
	for _, bits := range []int{7, 31} {
		if _, err := NewPool(DefaultPoolBase, bits); err == nil {
			t.Errorf("NewPool(%s, %d) accepted", DefaultPoolBase, bits)
		}
	}
}

func TestVNIAllocator(t *testing.T) {
	if _, err := NewVNIAllocator(0, 10); err == nil {
		t.Error("range starting at 0 accepted")
	}
	if _, err := NewVNIAllocator(4096, MaxVNI+1); err == nil {
		t.Error("range past 2^24-1 accepted")
	}
	a, err := NewVNIAllocator(4096, 4098)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Restore([]uint32{4097, 5000}); !errors.Is(err, ErrVNIOutOfRange) {
		t.Fatalf("Restore err = %v, want out of range for 5000", err)
	}
	var got []string
	for range 2 {
		v, err := a.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprint(v))
	}
	if strings.Join(got, " ") != "4096 4098" {
		t.Fatalf("allocated %v, want 4096 4098", got)
	}
	if _, err := a.Allocate(); !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	if err := a.AllocateSpecific(4097); !errors.Is(err, ErrInUse) {
		t.Fatalf("AllocateSpecific(in use) = %v", err)
	}
	if err := a.Release(4097); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(4097); !errors.Is(err, ErrNotAllocated) {
		t.Fatalf("double release = %v", err)
	}
	if err := a.AllocateSpecific(4097); err != nil {
		t.Fatal(err)
	}
}
