package servicemodel

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// History records operations from concurrent clients. Times are read from
// one monotonic clock, taken before a call is sent and after its answer
// arrived, so the recorded interval holds the real one.
type History struct {
	start time.Time

	mu  sync.Mutex
	ops []porcupine.Operation
}

// NewHistory starts an empty history.
func NewHistory() *History { return &History{start: time.Now()} }

func (h *History) now() int64 { return int64(time.Since(h.start)) }

// Call records that client is about to call in; the returned function
// records the answer and must be called once the call returned (with
// Unknown when the client cannot tell what happened).
func (h *History) Call(client int, in Input) func(Output) {
	call := h.now()
	return func(out Output) {
		ret := h.now()
		h.mu.Lock()
		defer h.mu.Unlock()
		h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	}
}

// Operations returns the history for the checker: an Unknown write's
// return is moved past every other operation's, and an Unknown read, which
// changed nothing and told nothing, is left out (it would only make the
// checker's search longer).
func (h *History) Operations() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	var last int64
	for _, op := range h.ops {
		last = max(last, op.Return)
	}
	out := make([]porcupine.Operation, 0, len(h.ops))
	for _, op := range h.ops {
		if op.Output.(Output).Outcome == Unknown {
			if op.Input.(Input).Kind == Read {
				continue
			}
			op.Return = last + 1
		}
		out = append(out, op)
	}
	return out
}

// Counts tallies the recorded operations by kind and outcome ("put ok": 12).
func (h *History) Counts() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int{}
	for _, op := range h.ops {
		out[fmt.Sprintf("%s %s", op.Input.(Input).Kind, op.Output.(Output).Outcome)]++
	}
	return out
}

// Writes returns the operations without the reads: whether the writes
// alone are linearizable tells stale reads from lost or doubled writes.
func Writes(ops []porcupine.Operation) []porcupine.Operation {
	var out []porcupine.Operation
	for _, op := range ops {
		if op.Input.(Input).Kind != Read {
			out = append(out, op)
		}
	}
	return out
}

// Check checks ops against the model within timeout. On Illegal the
// string shows, for each service whose history cannot be linearized, the
// end of the longest linearizable prefix and the operations that were
// pending there, one of which is the culprit.
func Check(ops []porcupine.Operation, timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo, string) {
	res, info := porcupine.CheckOperationsVerbose(Model(), ops, timeout)
	if res != porcupine.Illegal {
		return res, info, ""
	}
	return res, info, explain(ops, info)
}

// explainTail is how many linearized operations the explanation shows
// before the point where linearization got stuck.
const explainTail = 8

func explain(ops []porcupine.Operation, info porcupine.LinearizationInfo) string {
	// The checker numbers each partition's operations by their index in
	// what partition returned.
	parts := partition(ops)
	var b strings.Builder
	for i, lins := range info.PartialLinearizations() {
		part := parts[i]
		var longest []int
		for _, l := range lins {
			if len(l) > len(longest) {
				longest = l
			}
		}
		if len(longest) == len(part) {
			continue
		}
		name := part[0].Input.(Input).Service
		fmt.Fprintf(&b, "service %s: %d of %d operations linearize; the last of them:\n", name, len(longest), len(part))
		state := State{}
		done := map[int]bool{}
		for j, id := range longest {
			op := part[id]
			done[id] = true
			_, state = Step(state, op.Input.(Input), op.Output.(Output))
			if j >= len(longest)-explainTail {
				fmt.Fprintf(&b, "  %s\n", describeOp(op))
			}
		}
		// What could come next: every operation left that was called
		// before the first of them returned.
		var firstReturn int64 = -1
		for id, op := range part {
			if !done[id] && (firstReturn < 0 || op.Return < firstReturn) {
				firstReturn = op.Return
			}
		}
		fmt.Fprintf(&b, "  state then: %s; none of these can come next:\n", state)
		for id, op := range part {
			if !done[id] && op.Call <= firstReturn {
				fmt.Fprintf(&b, "  %s\n", describeOp(op))
			}
		}
	}
	return b.String()
}

func describeOp(op porcupine.Operation) string {
	return fmt.Sprintf("c%d [%.3fs, %.3fs] %s", op.ClientId, time.Duration(op.Call).Seconds(), time.Duration(op.Return).Seconds(),
		Describe(op.Input.(Input), op.Output.(Output)))
}
