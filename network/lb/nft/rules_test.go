package nft

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"

	"github.com/shoal-project/shoal/internal/golden"
	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/internal/dispatch"
	"github.com/shoal-project/shoal/network/lb/internal/nfttest"
)

// These tests plan rules without a kernel: the Balancer writes to
// nfttest's fake connection, and the ruleset it leaves, or the operations
// one Apply sent, are compared with testdata/*.golden (go test -update
// rewrites them). The kernel tests check that the same rules carry
// traffic.

// fakeConntrack counts the conntrack filters a Balancer asks to delete.
type fakeConntrack struct{ filters int }

func (f *fakeConntrack) ConntrackDeleteFilters(_ netlink.ConntrackTableType, _ netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error) {
	f.filters += len(filters)
	return 0, nil
}

func (f *fakeConntrack) Close() {}

// fakeBalancer is a Balancer on the default table that writes to a fake.
func fakeBalancer(t *testing.T) (*Balancer, *nfttest.Conn, *fakeConntrack) {
	t.Helper()
	c, ct := nfttest.New(), &fakeConntrack{}
	b, err := New(withConn(c, ct), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	return b, c, ct
}

// built is the ruleset a fresh Balancer makes for fs in one full build.
func built(t *testing.T, fs ...lb.Frontend) string {
	t.Helper()
	b, c, _ := fakeBalancer(t)
	apply(t, b, fs...)
	return c.Ruleset()
}

func be(addr string, port uint16) lb.Backend {
	return lb.Backend{Addr: netip.MustParseAddr(addr), Port: port}
}

func TestRulesetGolden(t *testing.T) {
	vip := netip.MustParseAddr("10.20.0.2")
	tests := []struct {
		name      string
		frontends []lb.Frontend
	}{
		{"empty", nil},
		{"published", []lb.Frontend{
			// mode=ingress: every node DNATs to every task, masqueraded.
			{Name: "pub:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true,
				Backends: []lb.Backend{be("10.0.0.3", 80), be("10.0.0.4", 80), be("10.0.0.5", 80)}},
			{Name: "pub:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Masquerade: true,
				Backends: []lb.Backend{be("10.0.0.6", 53), be("10.0.0.7", 53)}},
			// No task runs: refused, not dropped.
			{Name: "pub:idle:9000/tcp", Protocol: lb.TCP, Port: 9000, Masquerade: true, Backends: []lb.Backend{}},
		}},
		{"vip", []lb.Frontend{
			// Swarm-style VIPs: every port of the service's VIP, client kept.
			{Name: "vip:web:backend/tcp", Protocol: lb.TCP, VIP: vip,
				Backends: []lb.Backend{{Addr: netip.MustParseAddr("10.20.0.3")}, {Addr: netip.MustParseAddr("10.20.0.4")}}},
			{Name: "vip:web:backend/udp", Protocol: lb.UDP, VIP: vip, Masquerade: true,
				Backends: []lb.Backend{{Addr: netip.MustParseAddr("10.20.0.3")}, {Addr: netip.MustParseAddr("10.20.0.4")}}},
			// One port of the same VIP wins over its any-port frontend.
			{Name: "vip:web:backend:8443/tcp", Protocol: lb.TCP, VIP: vip, Port: 8443,
				Backends: []lb.Backend{be("10.20.0.4", 443)}},
		}},
		{"local", []lb.Frontend{
			// traffic=local: this node's tasks only, client address kept.
			{Name: "pub:app:8081/tcp", Protocol: lb.TCP, Port: 8081, Backends: []lb.Backend{be("10.0.0.3", 80)}},
			// mode=host is the same frontend on the nodes that run a task
			// (worker/netagent leaves it out elsewhere).
			{Name: "pub:api:9001/tcp", Protocol: lb.TCP, Port: 9001, Backends: []lb.Backend{be("10.20.0.9", 80)}},
		}},
		{"ipv6", []lb.Frontend{
			{Name: "pub:web6:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true,
				Backends: []lb.Backend{be("fd00::3", 80), be("fd00::4", 80)}},
			{Name: "vip:web6:backend/tcp", Protocol: lb.TCP, VIP: netip.MustParseAddr("fd00:20::2"),
				Backends: []lb.Backend{{Addr: netip.MustParseAddr("fd00:20::3")}}},
			{Name: "vip:web6:backend:53/udp", Protocol: lb.UDP, VIP: netip.MustParseAddr("fd00:20::2"), Port: 53,
				Backends: []lb.Backend{be("fd00:20::3", 5353)}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			golden.Check(t, "ruleset_"+tt.name, built(t, tt.frontends...))
		})
	}
}

// changeBase is the state every change in TestChangeTouchesOnlyItsFrontend
// starts from.
func changeBase() []lb.Frontend {
	return []lb.Frontend{
		{Name: "pub:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true,
			Backends: []lb.Backend{be("10.0.0.3", 80), be("10.0.0.4", 80)}},
		{Name: "pub:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Masquerade: true,
			Backends: []lb.Backend{be("10.0.0.6", 53), be("10.0.0.7", 53)}},
		{Name: "vip:web:backend/tcp", Protocol: lb.TCP, VIP: netip.MustParseAddr("10.20.0.2"),
			Backends: []lb.Backend{{Addr: netip.MustParseAddr("10.20.0.3")}}},
		{Name: "pub:app:8081/tcp", Protocol: lb.TCP, Port: 8081, Backends: []lb.Backend{be("10.0.0.3", 80)}},
	}
}

// TestChangeTouchesOnlyItsFrontend checks what one change sends: only the
// changed frontend's chain and map element (and the hairpin entries of
// backend addresses that come or go), as the golden batch shows, and that
// the ruleset it leaves is the one a full build of the new state makes.
func TestChangeTouchesOnlyItsFrontend(t *testing.T) {
	tests := []struct {
		name   string
		change func(fs []lb.Frontend) []lb.Frontend
		// touched is the frontend the batch may name.
		touched string
	}{
		{"add_backend", func(fs []lb.Frontend) []lb.Frontend {
			fs[0].Backends = append(fs[0].Backends, be("10.0.0.5", 80))
			return fs
		}, "pub:web:8080/tcp"},
		{"remove_backend", func(fs []lb.Frontend) []lb.Frontend {
			fs[1].Backends = fs[1].Backends[1:]
			return fs
		}, "pub:dns:5353/udp"},
		{"remove_every_backend", func(fs []lb.Frontend) []lb.Frontend {
			fs[2].Backends = nil
			return fs
		}, "vip:web:backend/tcp"},
		{"change_port", func(fs []lb.Frontend) []lb.Frontend {
			fs[3].Port = 8082
			return fs
		}, "pub:app:8081/tcp"},
		{"toggle_masquerade", func(fs []lb.Frontend) []lb.Frontend {
			fs[3].Masquerade = true
			return fs
		}, "pub:app:8081/tcp"},
		{"add_frontend", func(fs []lb.Frontend) []lb.Frontend {
			return append(fs, lb.Frontend{Name: "pub:new:9000/tcp", Protocol: lb.TCP, Port: 9000, Masquerade: true,
				Backends: []lb.Backend{be("10.0.0.9", 80)}})
		}, "pub:new:9000/tcp"},
		{"remove_frontend", func(fs []lb.Frontend) []lb.Frontend {
			return fs[1:]
		}, "pub:web:8080/tcp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, c, _ := fakeBalancer(t)
			apply(t, b, changeBase()...)
			next := tt.change(cloneFrontends(changeBase()))
			apply(t, b, next...)
			batch := c.LastBatch()
			golden.Check(t, "change_"+tt.name, strings.Join(batch.Ops, "\n")+"\n")

			// Its chain, its element (named by its comment, or by its old
			// key when deleted), or hairpin entries.
			mine := []string{frontendChain(tt.touched), fmt.Sprintf("%q", tt.touched), " " + setHairpin4 + " ", " " + setHairpin6 + " "}
			for _, f := range changeBase() {
				if f.Name == tt.touched {
					mine = append(mine, "{ "+elementKeyText(f)+" }")
				}
			}
			for _, op := range batch.Ops {
				if !slices.ContainsFunc(mine, func(s string) bool { return strings.Contains(op, s) }) {
					t.Errorf("change to %s sent an operation on something else: %s", tt.touched, op)
				}
			}
			if got, want := c.Ruleset(), built(t, next...); got != want {
				t.Errorf("ruleset after the change differs from a full build of the new state\n--- after the change\n%s--- full build\n%s", got, want)
			}
		})
	}
}

// elementKeyText is f's map key as nft prints it.
func elementKeyText(f lb.Frontend) string {
	key := fmt.Sprintf("%s . %d", f.Protocol, f.Port)
	switch {
	case f.IsAnyPort():
		return fmt.Sprintf("%s . %s", f.VIP, f.Protocol)
	case f.IsVIP():
		return fmt.Sprintf("%s . %s", f.VIP, key)
	}
	return key
}

func TestUnchangedStateSendsNothing(t *testing.T) {
	b, c, _ := fakeBalancer(t)
	apply(t, b, changeBase()...)
	apply(t, b, changeBase()...)
	if ops := c.LastBatch().Ops; len(ops) != 0 {
		t.Errorf("second Apply of the same state sent:\n%s", strings.Join(ops, "\n"))
	}
}

// TestFailedTransactionRebuilds: a refused transaction leaves the ruleset
// as it was, and the next Apply rebuilds the table whole.
func TestFailedTransactionRebuilds(t *testing.T) {
	b, c, _ := fakeBalancer(t)
	apply(t, b, changeBase()...)
	before := c.Ruleset()
	b.beforeFlush = func(c conn, tbl *nftables.Table) {
		// A map element that goes to a missing chain: the kernel refuses
		// the whole transaction.
		c.SetAddElements(&nftables.Set{Table: tbl, Name: dispatch.SetPublished}, []nftables.SetElement{{
			Key:         []byte{17, 0, 0, 0, 0x10, 0x00, 0, 0},
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: "no-such-chain"},
		}})
	}
	next := cloneFrontends(changeBase())
	next[0].Backends = next[0].Backends[:1]
	if err := b.Apply(context.Background(), lb.State{Frontends: next}); err == nil {
		t.Fatal("Apply with a refused transaction: nil error")
	}
	if got := c.Ruleset(); got != before {
		t.Errorf("refused transaction changed the ruleset:\n%s", got)
	}
	b.beforeFlush = nil
	apply(t, b, next...)
	if ops := c.LastBatch().Ops; len(ops) < 2 || ops[1] != "delete table inet "+DefaultTable {
		t.Errorf("Apply after a refused transaction did not rebuild the table: %v", ops)
	}
	if got, want := c.Ruleset(), built(t, next...); got != want {
		t.Errorf("rebuilt ruleset differs from a full build\n--- rebuilt\n%s--- full build\n%s", got, want)
	}
}

func TestRemovedUDPBackendForgetsItsFlows(t *testing.T) {
	b, _, ct := fakeBalancer(t)
	apply(t, b, changeBase()...)
	next := cloneFrontends(changeBase())
	next[0].Backends = next[0].Backends[1:] // TCP: conntrack is left alone
	next[1].Backends = next[1].Backends[1:] // UDP
	apply(t, b, next...)
	// One filter per removed UDP backend, sent for IPv4 and for IPv6.
	if ct.filters != 2 {
		t.Errorf("conntrack filters sent: %d, want 2 (one UDP backend, both families)", ct.filters)
	}
}

func TestCloseDeletesTable(t *testing.T) {
	b, c, _ := fakeBalancer(t)
	apply(t, b, changeBase()...)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := c.Ruleset(); got != "" {
		t.Errorf("ruleset after Close:\n%s", got)
	}
}
