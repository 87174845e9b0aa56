// Package await is how shoal's tests wait for something asynchronous: poll
// a condition until it holds, and fail the test, naming what it waited for
// and the condition's last word on why not, when it does not hold in time.
//
// It is test support: only _test files import it.
package await

import (
	"testing"
	"time"
)

// Settle bounds a wait for something in the test's own process (a store
// change, a raft election, an agent's report). It is generous on purpose:
// it only stops a broken test from hanging; it measures nothing.
const Settle = 30 * time.Second

// Every is how often For polls: often enough that a wait adds nothing a
// test would notice, rarely enough that polling costs nothing either.
const Every = 5 * time.Millisecond

// Condition is what a test waits for: a bare yes or no, or a yes or no
// with a detail that says why not (the failure message shows the last one).
type Condition interface {
	func() bool | func() (bool, string)
}

// For polls cond every Every until it holds, and fails the test once
// Settle has passed without it.
func For[C Condition](t testing.TB, what string, cond C) {
	t.Helper()
	Within(t, Settle, Every, what, cond)
}

// Within polls cond every interval until it holds, and fails the test once
// timeout has passed without it: waits on real processes and clusters
// take longer and need not poll as often.
func Within[C Condition](t testing.TB, timeout, interval time.Duration, what string, cond C) {
	t.Helper()
	check := withDetail(cond)
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := check()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if detail == "" {
				t.Fatalf("gave up waiting %v for %s", timeout, what)
			}
			t.Fatalf("gave up waiting %v for %s: %s", timeout, what, detail)
		}
		time.Sleep(interval)
	}
}

func withDetail[C Condition](cond C) func() (bool, string) {
	switch c := any(cond).(type) {
	case func() (bool, string):
		return c
	case func() bool:
		return func() (bool, string) { return c(), "" }
	}
	panic("unreachable: Condition has two forms")
}
