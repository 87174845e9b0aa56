package ipvs

import (
	"errors"
	"testing"
)

func TestNewKernelRefusesWithoutIPVS(t *testing.T) {
	if Available() {
		t.Skip("the kernel has IPVS, so there is no refusal to check")
	}
	b, err := NewKernel("")
	if !errors.Is(err, ErrNoIPVS) {
		if b != nil {
			b.Close()
		}
		t.Fatalf("NewKernel without IPVS: %v, want ErrNoIPVS", err)
	}
}
