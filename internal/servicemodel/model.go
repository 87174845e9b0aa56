// Package servicemodel is a sequential model of shoal's service table for
// the porcupine linearizability checker, and a recorder of the histories
// that the lab's fault tests check against it. It is test support: shoald
// and shoalctl never link it.
//
// The model keeps, per service name, whether the service exists and the
// three things a client sets and reads back: replicas, image and a write
// token (a label unique to each write, so that every write makes a state
// no other write makes and a compare-and-set can be judged by the token it
// expected). Operations are create (fails if the service exists), put (an
// update that names no version: a blind write of the whole spec), cas (an
// update that names the meta.version the client read: it may succeed only
// if no write came between that read and it), remove and read.
//
// An operation whose outcome the client could not learn (a timeout, a
// dropped connection, a manager that stopped answering) is Unknown: the
// recorder gives it a return time after every other operation, so the
// checker may place it anywhere after its call, including after
// everything (where it changes nothing anybody saw), which is how an
// operation that may or may not have happened is checked.
package servicemodel

import (
	"fmt"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"
)

// Kind is what an operation does.
type Kind int

// Kinds of operation.
const (
	Create Kind = iota + 1
	Put
	CAS
	Read
	Remove
)

func (k Kind) String() string {
	switch k {
	case Create:
		return "create"
	case Put:
		return "put"
	case CAS:
		return "cas"
	case Read:
		return "read"
	case Remove:
		return "remove"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// State is one service as the model sees it. It is comparable: porcupine
// compares states with ==.
type State struct {
	Exists   bool
	Replicas uint64
	Image    string
	// Write is the token of the write that made this state.
	Write string
}

func (s State) String() string {
	if !s.Exists {
		return "absent"
	}
	return fmt.Sprintf("{%d×%s w=%s}", s.Replicas, s.Image, s.Write)
}

// Input is an operation as the client called it.
type Input struct {
	Kind    Kind
	Service string
	// New is what a write (Create, Put, CAS) asks the service to become;
	// New.Exists is ignored.
	New State
	// Expect is, for CAS, the write token of the state the client read
	// (and whose meta.version it sent).
	Expect string
}

// Outcome is what the client learnt of an operation.
type Outcome int

// Outcomes.
const (
	// OK: the call succeeded; Output.State is what it returned (nothing
	// for a remove).
	OK Outcome = iota + 1
	// AlreadyExists: a create found the service there; nothing changed.
	AlreadyExists
	// NotFound: there was no such service; nothing changed.
	NotFound
	// Aborted: a write's version check failed; nothing changed.
	Aborted
	// Unknown: the client cannot tell whether the operation took effect.
	Unknown
)

func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case AlreadyExists:
		return "exists"
	case NotFound:
		return "not-found"
	case Aborted:
		return "aborted"
	case Unknown:
		return "unknown"
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// Output is what the call returned.
type Output struct {
	Outcome Outcome
	// State is, for OK, the service the call returned: as read, or as
	// written.
	State State
}

// written is the state a successful write leaves.
func written(in Input) State {
	s := in.New
	s.Exists = true
	return s
}

// Step is the sequential specification: whether the service in state s
// could answer in with out, and the state after.
func Step(s State, in Input, out Output) (bool, State) {
	if out.Outcome == Unknown {
		// It may have happened: if it is placed here, it did (placed
		// after everything, it changes nothing observed).
		switch {
		case in.Kind == Create && !s.Exists,
			in.Kind == Put && s.Exists,
			in.Kind == CAS && s.Exists && s.Write == in.Expect:
			return true, written(in)
		case in.Kind == Remove:
			return true, State{}
		}
		return true, s
	}
	if out.Outcome == Aborted && in.Kind != Read {
		// A write refused on a version check (or, for a create, any
		// conflict) changed nothing and tells nothing of the state: the
		// orchestrator's own writes of a rollout's progress move the
		// version too, and the model does not see them.
		return true, s
	}
	switch in.Kind {
	case Create:
		switch out.Outcome {
		case OK:
			return !s.Exists && out.State == written(in), written(in)
		case AlreadyExists:
			return s.Exists, s
		}
	case Put:
		switch out.Outcome {
		case OK:
			return s.Exists && out.State == written(in), written(in)
		case NotFound:
			return !s.Exists, s
		}
	case CAS:
		switch out.Outcome {
		case OK:
			return s.Exists && s.Write == in.Expect && out.State == written(in), written(in)
		case NotFound:
			return !s.Exists, s
		}
	case Remove:
		switch out.Outcome {
		case OK:
			return s.Exists, State{}
		case NotFound:
			return !s.Exists, s
		}
	case Read:
		switch out.Outcome {
		case OK:
			return s.Exists && out.State == s, s
		case NotFound:
			return !s.Exists, s
		}
	}
	return false, s
}

// Model is the porcupine model of the service table, partitioned by
// service name (services are independent, so the history is linearizable
// iff each service's is).
func Model() porcupine.Model {
	return modelWith(Step)
}

// modelWith builds the porcupine model around a step function (the unit
// tests check that a wrong one is caught).
func modelWith(step func(State, Input, Output) (bool, State)) porcupine.Model {
	return porcupine.Model{
		Partition: partition,
		Init:      func() interface{} { return State{} },
		Step: func(state, input, output interface{}) (bool, interface{}) {
			return step(state.(State), input.(Input), output.(Output))
		},
		DescribeOperation: func(input, output interface{}) string {
			return Describe(input.(Input), output.(Output))
		},
		DescribeState: func(state interface{}) string { return state.(State).String() },
	}
}

func partition(history []porcupine.Operation) [][]porcupine.Operation {
	by := map[string][]porcupine.Operation{}
	for _, op := range history {
		name := op.Input.(Input).Service
		by[name] = append(by[name], op)
	}
	names := make([]string, 0, len(by))
	for name := range by {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([][]porcupine.Operation, 0, len(names))
	for _, name := range names {
		out = append(out, by[name])
	}
	return out
}

// Describe renders an operation for failure messages.
func Describe(in Input, out Output) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", in.Kind, in.Service)
	switch in.Kind {
	case Create, Put:
		fmt.Fprintf(&b, " %s", written(in))
	case CAS:
		fmt.Fprintf(&b, " if w=%s then %s", in.Expect, written(in))
	}
	fmt.Fprintf(&b, " -> %s", out.Outcome)
	if out.Outcome == OK && in.Kind == Read {
		fmt.Fprintf(&b, " %s", out.State)
	}
	return b.String()
}
