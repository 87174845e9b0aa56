package servicemodel

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

const svc = "web"

func op(client int, call, ret int64, in Input, out Output) porcupine.Operation {
	if in.Service == "" {
		in.Service = svc
	}
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

func st(replicas uint64, image, write string) State {
	return State{Exists: true, Replicas: replicas, Image: image, Write: write}
}

var (
	a = st(1, "echo:v1", "a")
	b = st(2, "echo:v1", "b")
	c = st(0, "echo:v2", "c")
)

func create(s State) Input             { return Input{Kind: Create, New: s} }
func put(s State) Input                { return Input{Kind: Put, New: s} }
func cas(expect string, s State) Input { return Input{Kind: CAS, Expect: expect, New: s} }
func read() Input                      { return Input{Kind: Read} }
func remove() Input                    { return Input{Kind: Remove} }
func ok(s State) Output                { return Output{Outcome: OK, State: s} }
func fail(o Outcome) Output            { return Output{Outcome: o} }

// forever is the return time of an operation whose outcome is unknown.
const forever = 1 << 40

func TestStepHistories(t *testing.T) {
	tests := []struct {
		name string
		ops  []porcupine.Operation
		want bool
	}{
		{"sequential create, put, read", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(0, 2, 3, put(b), ok(b)),
			op(1, 4, 5, read(), ok(b)),
		}, true},
		{"read before any create finds nothing", []porcupine.Operation{
			op(0, 0, 1, read(), fail(NotFound)),
			op(0, 2, 3, create(a), ok(a)),
		}, true},
		{"stale read after a completed put", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(0, 2, 3, put(b), ok(b)),
			op(1, 4, 5, read(), ok(a)),
		}, false},
		{"read of nothing after a completed create", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, 3, read(), fail(NotFound)),
		}, false},
		{"two creates both succeed", []porcupine.Operation{
			op(0, 0, 2, create(a), ok(a)),
			op(1, 1, 3, create(b), ok(b)),
		}, false},
		{"concurrent creates: one wins, the other finds it", []porcupine.Operation{
			op(0, 0, 2, create(a), ok(a)),
			op(1, 1, 3, create(b), fail(AlreadyExists)),
			op(2, 4, 5, read(), ok(a)),
		}, true},
		{"create says exists but nothing was ever created", []porcupine.Operation{
			op(0, 0, 1, create(a), fail(AlreadyExists)),
		}, false},
		{"cas succeeds after an intervening put", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, 3, put(b), ok(b)),
			op(0, 4, 5, cas("a", c), ok(c)),
		}, false},
		{"cas on what it read succeeds", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, 3, read(), ok(a)),
			op(1, 4, 5, cas("a", c), ok(c)),
			op(0, 6, 7, read(), ok(c)),
		}, true},
		{"cas may abort though nothing the model sees changed", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, 3, cas("a", c), fail(Aborted)),
			op(0, 4, 5, read(), ok(a)),
		}, true},
		{"a put returns another state than it wrote", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(0, 2, 3, put(b), ok(c)),
		}, false},
		{"put on nothing is not found", []porcupine.Operation{
			op(0, 0, 1, put(b), fail(NotFound)),
		}, true},
		{"unknown put seen later", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, forever, put(b), fail(Unknown)),
			op(0, 10, 11, read(), ok(a)),
			op(0, 12, 13, read(), ok(b)),
		}, true},
		{"unknown put never seen", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, forever, put(b), fail(Unknown)),
			op(0, 10, 11, read(), ok(a)),
		}, true},
		{"unknown put seen, then undone", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, forever, put(b), fail(Unknown)),
			op(0, 10, 11, read(), ok(b)),
			op(0, 12, 13, read(), ok(a)),
		}, false},
		{"unknown cas cannot apply on a state it did not expect", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(0, 2, 3, put(b), ok(b)),
			op(1, 4, forever, cas("a", c), fail(Unknown)),
			op(0, 10, 11, read(), ok(c)),
		}, false},
		{"remove, then create again", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, 3, remove(), ok(State{})),
			op(0, 4, 5, read(), fail(NotFound)),
			op(0, 6, 7, create(b), ok(b)),
			op(1, 8, 9, read(), ok(b)),
		}, true},
		{"read after a completed remove still finds it", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, 3, remove(), ok(State{})),
			op(0, 4, 5, read(), ok(a)),
		}, false},
		{"two removes both succeed", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, 4, remove(), ok(State{})),
			op(2, 3, 5, remove(), ok(State{})),
		}, false},
		{"create after a completed remove finds it", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, 3, remove(), ok(State{})),
			op(0, 4, 5, create(b), fail(AlreadyExists)),
		}, false},
		{"services are independent", []porcupine.Operation{
			op(0, 0, 1, create(a), ok(a)),
			op(1, 2, 3, Input{Kind: Read, Service: "db"}, fail(NotFound)),
			op(1, 4, 5, Input{Kind: Create, Service: "db", New: b}, ok(b)),
			op(0, 6, 7, read(), ok(a)),
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, _, why := Check(tt.ops, 10*time.Second)
			if got := res == porcupine.Ok; got != tt.want {
				t.Errorf("linearizable = %v (%s), want %v\n%s", got, res, tt.want, why)
			}
			if !tt.want && why == "" {
				t.Error("an illegal history has no explanation")
			}
		})
	}
}

// table is an in-memory service table. With lag > 0 its reads come from a
// copy that catches up with the writes only every lag writes, as a
// follower serving reads from a store that is behind would.
type table struct {
	mu      sync.Mutex
	lag     int
	m, seen map[string]State
	writes  int
}

func newTable(lag int) *table {
	return &table{lag: lag, m: map[string]State{}, seen: map[string]State{}}
}

func (tb *table) do(in Input) Output {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	cur := tb.m[in.Service]
	var out Output
	switch in.Kind {
	case Read:
		s := cur
		if tb.lag > 0 {
			s = tb.seen[in.Service]
		}
		if !s.Exists {
			return fail(NotFound)
		}
		return ok(s)
	case Create:
		if cur.Exists {
			return fail(AlreadyExists)
		}
	case Put, Remove:
		if !cur.Exists {
			return fail(NotFound)
		}
	case CAS:
		if !cur.Exists {
			return fail(NotFound)
		}
		if cur.Write != in.Expect {
			return fail(Aborted)
		}
	}
	if in.Kind == Remove {
		tb.m[in.Service] = State{}
		out = ok(State{})
	} else {
		tb.m[in.Service] = written(in)
		out = ok(written(in))
	}
	tb.writes++
	if tb.lag > 0 && tb.writes%tb.lag == 0 {
		for k, v := range tb.m {
			tb.seen[k] = v
		}
	}
	return out
}

// record runs clients against tb concurrently and returns their history.
func record(t *testing.T, tb *table, clients, opsEach int) []porcupine.Operation {
	t.Helper()
	h := NewHistory()
	services := []string{"web", "db"}
	var wg sync.WaitGroup
	for cl := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(cl), 7))
			last := map[string]string{}
			for i := range opsEach {
				name := services[rng.IntN(len(services))]
				s := State{Replicas: uint64(rng.IntN(3)), Image: fmt.Sprintf("echo:v%d", 1+rng.IntN(2)), Write: fmt.Sprintf("c%d-%d", cl, i)}
				var in Input
				switch r := rng.IntN(10); {
				case r < 2:
					in = Input{Kind: Create, Service: name, New: s}
				case r < 5:
					in = Input{Kind: Put, Service: name, New: s}
				case r < 7:
					in = Input{Kind: CAS, Service: name, New: s, Expect: last[name]}
				case r < 8:
					in = Input{Kind: Remove, Service: name}
				default:
					in = Input{Kind: Read, Service: name}
				}
				done := h.Call(cl, in)
				time.Sleep(time.Duration(rng.IntN(50)) * time.Microsecond)
				out := tb.do(in)
				if in.Kind == Read && out.Outcome == OK {
					last[name] = out.State.Write
				}
				// Some answers are lost on the way back.
				if in.Kind != Read && rng.IntN(20) == 0 {
					out = fail(Unknown)
				}
				time.Sleep(time.Duration(rng.IntN(50)) * time.Microsecond)
				done(out)
			}
		})
	}
	wg.Wait()
	return h.Operations()
}

func TestCheckConcurrentTables(t *testing.T) {
	t.Run("a linearizable table passes", func(t *testing.T) {
		ops := record(t, newTable(0), 4, 200)
		if res, _, why := Check(ops, 30*time.Second); res != porcupine.Ok {
			t.Fatalf("check = %s, want ok\n%s", res, why)
		}
	})
	t.Run("a table with stale reads fails, its writes alone pass", func(t *testing.T) {
		ops := record(t, newTable(5), 4, 200)
		res, _, why := Check(ops, 30*time.Second)
		if res != porcupine.Illegal {
			t.Fatalf("check = %s, want illegal", res)
		}
		if !strings.Contains(why, "read") {
			t.Errorf("the explanation names no read:\n%s", why)
		}
		if res, _, why := Check(Writes(ops), 30*time.Second); res != porcupine.Ok {
			t.Errorf("writes alone: check = %s, want ok\n%s", res, why)
		}
	})
}

// TestWrongModelFails shows the check has teeth: a history of a correct
// table, which the model accepts, is rejected by models that each get one
// rule of the service table wrong.
func TestWrongModelFails(t *testing.T) {
	ops := record(t, newTable(0), 4, 200)
	if res := porcupine.CheckOperationsTimeout(Model(), ops, 30*time.Second); res != porcupine.Ok {
		t.Fatalf("the right model: %s, want ok", res)
	}
	wrong := map[string]func(State, Input, Output) (bool, State){
		// Puts never take effect.
		"put is a no-op": func(s State, in Input, out Output) (bool, State) {
			if in.Kind == Put {
				return true, s
			}
			return Step(s, in, out)
		},
		// Create succeeds over an existing service.
		"create overwrites": func(s State, in Input, out Output) (bool, State) {
			if in.Kind == Create && out.Outcome != Unknown {
				return out.Outcome == OK, written(in)
			}
			return Step(s, in, out)
		},
		// A successful remove leaves the service there.
		"remove is a no-op": func(s State, in Input, out Output) (bool, State) {
			if in.Kind == Remove && out.Outcome == OK {
				return s.Exists, s
			}
			return Step(s, in, out)
		},
		// A successful CAS leaves the service as it was.
		"cas is a no-op": func(s State, in Input, out Output) (bool, State) {
			if in.Kind == CAS && out.Outcome == OK {
				return s.Exists && s.Write == in.Expect, s
			}
			return Step(s, in, out)
		},
	}
	// One client's history is the same on every run (its seed is fixed and
	// nothing interleaves), so a wrong model is caught every time; the
	// concurrent one may by chance lack the pattern that shows one rule.
	sequential := record(t, newTable(0), 1, 400)
	for name, step := range wrong {
		t.Run(name, func(t *testing.T) {
			if res := porcupine.CheckOperationsTimeout(modelWith(step), sequential, 30*time.Second); res != porcupine.Illegal {
				t.Errorf("a wrong model (%s) on one client's history: %s, want illegal", name, res)
			}
		})
	}
}
