package lab

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

func TestExclusive(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to lock " + lockFile)
	}
	release, err := Exclusive(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// A second holder in the same process is excluded too: tests of one
	// package must not share the slot either.
	ctx, cancel := context.WithTimeout(t.Context(), 3*lockPoll)
	defer cancel()
	if _, err := Exclusive(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Exclusive while held: err = %v, want a deadline error", err)
	}
	release()
	ctx, cancel = context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	again, err := Exclusive(ctx)
	if err != nil {
		t.Fatalf("Exclusive after release: %v", err)
	}
	again()
}

func TestAbridge(t *testing.T) {
	tests := []struct {
		items []string
		want  string
	}{
		{nil, ""},
		{[]string{"a", "b"}, "a, b"},
		{[]string{"a", "b", "c"}, "a, b and 1 more"},
		{[]string{"a", "b", "c", "d", "e"}, "a, b and 3 more"},
	}
	for _, tt := range tests {
		if got := abridge(tt.items, 2); got != tt.want {
			t.Errorf("abridge(%q) = %q, want %q", tt.items, got, tt.want)
		}
	}
}
