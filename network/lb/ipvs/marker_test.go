package ipvs

import (
	"context"
	_ "embed"
	"encoding/hex"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/internal/dispatch"
	"github.com/shoal-project/shoal/network/lb/lbtest"
)

func TestHelperProcess(t *testing.T) { lbtest.HelperProcess() }

const testMarkTable = "shoal-ipvs-mark-test"

func TestValidateMarks(t *testing.T) {
	web := lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080}
	dns := lb.Frontend{Name: "svc:dns:53/udp", Protocol: lb.UDP, Port: 53}
	webAgain := web
	webAgain.Name = "svc:other:8080/tcp"
	tests := []struct {
		name    string
		marks   []Mark
		wantErr string
	}{
		{name: "empty", marks: nil},
		{name: "valid", marks: []Mark{{web, 0x100}, {dns, 0x101}}},
		{name: "backends ignored", marks: []Mark{{lb.Frontend{Name: "x", Protocol: lb.TCP, Port: 1, Backends: []lb.Backend{{}}}, 0x100}}},
		{name: "mark zero", marks: []Mark{{web, 0}}, wantErr: "mark 0"},
		{name: "last mark of the range", marks: []Mark{{web, FirstMark + MaxMarks - 1}}},
		{name: "mark below the range", marks: []Mark{{web, FirstMark - 1}}, wantErr: "outside the balancer's range"},
		{name: "mark above the range", marks: []Mark{{web, FirstMark + MaxMarks}}, wantErr: "outside the balancer's range"},
		{name: "shared mark", marks: []Mark{{web, 0x100}, {dns, 0x100}}, wantErr: `already frontend "svc:web:8080/tcp"'s`},
		{name: "shared key", marks: []Mark{{web, 0x100}, {webAgain, 0x101}}, wantErr: "already balanced"},
		{name: "bad protocol", marks: []Mark{{lb.Frontend{Name: "x", Protocol: "sctp", Port: 1}, 0x100}}, wantErr: "unknown protocol"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := validateMarks(tc.marks)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("validateMarks: %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("validateMarks: %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func newTestMarker(t *testing.T, ns netns.NsHandle) *NftMarker {
	t.Helper()
	m, err := NewNftMarker(WithMarkNetNS(ns), WithMarkTable(testMarkTable))
	if err != nil {
		t.Fatalf("NewNftMarker: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func setMarks(t *testing.T, m *NftMarker, ms ...Mark) {
	t.Helper()
	if err := m.SetMarks(context.Background(), ms); err != nil {
		t.Fatalf("SetMarks: %v", err)
	}
}

// readConn is a connection of the test's own into ns, for reading back.
func readConn(t *testing.T, ns netns.NsHandle) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatalf("open nftables connection: %v", err)
	}
	return c
}

// readMarks reads the marker's maps back as "set key -> mark" and its
// masquerade set as "masquerade mark", one string each, sorted.
func readMarks(t *testing.T, c *nftables.Conn) []string {
	t.Helper()
	tbl := &nftables.Table{Name: testMarkTable, Family: nftables.TableFamilyINet}
	var out []string
	for _, name := range []string{dispatch.SetPublished, dispatch.SetVIP4, dispatch.SetVIP6, dispatch.SetVIP4Any, dispatch.SetVIP6Any, markSetMasquerade} {
		s, err := c.GetSetByName(tbl, name)
		if err != nil {
			t.Fatalf("get set %s: %v", name, err)
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			t.Fatalf("get elements of %s: %v", name, err)
		}
		for _, e := range elems {
			if name == markSetMasquerade {
				out = append(out, fmt.Sprintf("masquerade %#x", binaryutil.NativeEndian.Uint32(e.Key)))
				continue
			}
			out = append(out, fmt.Sprintf("%s %s -> %#x", name, hex.EncodeToString(e.Key), binaryutil.NativeEndian.Uint32(e.Val)))
		}
	}
	slices.Sort(out)
	return out
}

// wantMarks is what readMarks should return for ms.
func wantMarks(ms ...Mark) []string {
	m := &NftMarker{sets: newMarkSets(&nftables.Table{})}
	var out []string
	for _, mk := range ms {
		s, key := m.element(newMarkEntry(mk))
		out = append(out, fmt.Sprintf("%s %s -> %#x", s.Name, hex.EncodeToString(key), mk.Mark))
		if mk.Frontend.Masquerade {
			out = append(out, fmt.Sprintf("masquerade %#x", mk.Mark))
		}
	}
	slices.Sort(out)
	return out
}

func testMarks() []Mark {
	return []Mark{
		{lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true}, 0x100},
		{lb.Frontend{Name: "svc:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Masquerade: true}, 0x101},
		{lb.Frontend{Name: "vip:web:80/tcp", Protocol: lb.TCP, Port: 80, VIP: netip.MustParseAddr("10.231.9.9")}, 0x102},
		{lb.Frontend{Name: "vip:web6:80/tcp", Protocol: lb.TCP, Port: 80, VIP: netip.MustParseAddr("fd00:231::9")}, 0x103},
		{lb.Frontend{Name: "svc:keep:7000/udp", Protocol: lb.UDP, Port: 7000}, 0x104},
		{lb.Frontend{Name: "vip:any:tcp", Protocol: lb.TCP, VIP: netip.MustParseAddr("10.231.9.9"), Masquerade: true}, 0x105},
		{lb.Frontend{Name: "vip:any6:udp", Protocol: lb.UDP, VIP: netip.MustParseAddr("fd00:231::9")}, 0x106},
	}
}

func TestKernelMarkerProgramsMarks(t *testing.T) {
	lbtest.RequireRoot(t)
	_, ns := lbtest.NewNetNS(t)
	m := newTestMarker(t, ns)
	c := readConn(t, ns)
	ms := testMarks()
	setMarks(t, m, ms...)
	if got, want := readMarks(t, c), wantMarks(ms...); !slices.Equal(got, want) {
		t.Errorf("after the first SetMarks:\ngot  %q\nwant %q", got, want)
	}

	// Marks swapped between two frontends and a key moved, in one call.
	ms[0].Mark, ms[1].Mark = ms[1].Mark, ms[0].Mark
	ms[2].Frontend.Port = 8081
	ms[5].Frontend.Protocol = lb.UDP
	ms = slices.Delete(ms, 4, 5)
	setMarks(t, m, ms...)
	if got, want := readMarks(t, c), wantMarks(ms...); !slices.Equal(got, want) {
		t.Errorf("after a change:\ngot  %q\nwant %q", got, want)
	}

	setMarks(t, m)
	if got := readMarks(t, c); len(got) != 0 {
		t.Errorf("after SetMarks with nothing: %q left", got)
	}
}

// commitWatcher collects what each nftables commit in a namespace changed.
type commitWatcher struct {
	mon *nftables.Monitor
	ch  chan *nftables.MonitorEvents
}

// commitWatchTimeout bounds the wait for the notification of a commit that
// has already returned; it only turns a hang into a failure.
const commitWatchTimeout = 10 * time.Second

func watchCommits(t *testing.T, ns netns.NsHandle) *commitWatcher {
	t.Helper()
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(16))
	ch, err := readConn(t, ns).AddGenerationalMonitor(mon)
	if err != nil {
		t.Fatalf("monitor nftables: %v", err)
	}
	t.Cleanup(func() {
		mon.Close()
		for range ch { // the monitor's goroutine ends once drained
		}
	})
	return &commitWatcher{mon: mon, ch: ch}
}

// next returns the changes of the next commit, one string per change.
func (w *commitWatcher) next(t *testing.T) []string {
	t.Helper()
	select {
	case evs, ok := <-w.ch:
		if !ok {
			t.Fatal("nftables monitor closed")
		}
		var out []string
		for _, e := range evs.Changes {
			if e.Error != nil {
				t.Fatalf("nftables monitor event: %v", e.Error)
			}
			switch e.Type {
			case nftables.MonitorEventTypeNewSetElem, nftables.MonitorEventTypeDelSetElem:
				op := map[nftables.MonitorEventType]string{nftables.MonitorEventTypeNewSetElem: "add", nftables.MonitorEventTypeDelSetElem: "del"}[e.Type]
				for _, el := range e.Data.([]nftables.SetElement) {
					out = append(out, op+" element "+hex.EncodeToString(el.Key))
				}
			default:
				out = append(out, fmt.Sprintf("event type %d", e.Type))
			}
		}
		return out
	case <-time.After(commitWatchTimeout):
		t.Fatal("no nftables commit notification")
	}
	return nil
}

func TestKernelMarkerChangeTouchesOnlyItsFrontend(t *testing.T) {
	lbtest.RequireRoot(t)
	_, ns := lbtest.NewNetNS(t)
	m := newTestMarker(t, ns)
	var ms []Mark
	for i := range 20 {
		f := lb.Frontend{Name: fmt.Sprintf("svc:s%d:%d/tcp", i, 8000+i), Protocol: lb.TCP, Port: uint16(8000 + i), Masquerade: i%3 == 0}
		if i%2 == 1 {
			f.Name, f.VIP = fmt.Sprintf("vip:s%d:80/tcp", i), netip.AddrFrom4([4]byte{10, 231, 9, byte(i)})
		}
		ms = append(ms, Mark{f, FirstMark + uint32(i)})
	}
	setMarks(t, m, ms...)
	w := watchCommits(t, ns)

	keyOf := func(mk Mark) string {
		_, key := m.element(newMarkEntry(mk))
		return hex.EncodeToString(key)
	}
	markOf := func(mark uint32) string { return hex.EncodeToString(markKey(mark)) }
	tests := []struct {
		name   string
		change func([]Mark) []Mark
		want   []string // the commit's changes, sorted
	}{
		{"change the port", func(ms []Mark) []Mark { ms[4].Frontend.Port = 9999; return ms }, []string{
			"add element " + keyOf(Mark{lb.Frontend{Protocol: lb.TCP, Port: 9999}, 0}),
			"del element " + keyOf(ms[4]),
		}},
		{"change the mark", func(ms []Mark) []Mark { ms[5].Mark = 0x800; return ms }, []string{
			"add element " + keyOf(ms[5]), "del element " + keyOf(ms[5]),
		}},
		{"toggle masquerade", func(ms []Mark) []Mark { ms[7].Frontend.Masquerade = true; return ms }, []string{
			"add element " + keyOf(ms[7]), "add element " + markOf(ms[7].Mark), "del element " + keyOf(ms[7]),
		}},
		{"remove a masquerading frontend", func(ms []Mark) []Mark { return slices.Delete(ms, 6, 7) }, []string{
			"del element " + keyOf(ms[6]), "del element " + markOf(ms[6].Mark),
		}},
		{"add a frontend", func(ms []Mark) []Mark {
			return append(ms, Mark{lb.Frontend{Name: "svc:new:7777/udp", Protocol: lb.UDP, Port: 7777}, 0x900})
		}, []string{"add element " + keyOf(Mark{lb.Frontend{Protocol: lb.UDP, Port: 7777}, 0})}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			next := tc.change(slices.Clone(ms))
			setMarks(t, m, next...)
			got := w.next(t)
			slices.Sort(got)
			slices.Sort(tc.want)
			if !slices.Equal(got, tc.want) {
				t.Errorf("commit changed:\n%s\nwant only:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			// Back to the start for the next case.
			setMarks(t, m, ms...)
			w.next(t)
		})
	}
}

func TestKernelMarkerFailedTransactionResyncs(t *testing.T) {
	lbtest.RequireRoot(t)
	_, ns := lbtest.NewNetNS(t)
	m := newTestMarker(t, ns)
	c := readConn(t, ns)
	ms := testMarks()
	setMarks(t, m, ms...)

	// An element of the wrong key length makes the kernel refuse the whole
	// transaction.
	m.beforeFlush = func(c *nftables.Conn, tbl *nftables.Table) {
		c.SetAddElements(&nftables.Set{Table: tbl, Name: dispatch.SetPublished, IsMap: true},
			[]nftables.SetElement{{Key: []byte{1}, Val: markKey(1)}})
	}
	changed := slices.Clone(ms)
	changed[0].Mark = 0x200
	if err := m.SetMarks(context.Background(), changed); err == nil {
		t.Fatal("SetMarks with an invalid element injected: nil error, want the kernel's refusal")
	}
	if got, want := readMarks(t, c), wantMarks(ms...); !slices.Equal(got, want) {
		t.Errorf("failed transaction changed the marks:\ngot  %q\nwant %q", got, want)
	}
	m.beforeFlush = nil

	// Someone else's edit, which only a full resync repairs.
	tbl := &nftables.Table{Name: testMarkTable, Family: nftables.TableFamilyINet}
	s, err := c.GetSetByName(tbl, dispatch.SetPublished)
	if err != nil {
		t.Fatal(err)
	}
	c.FlushSet(s)
	if err := c.Flush(); err != nil {
		t.Fatalf("flush set %s: %v", dispatch.SetPublished, err)
	}
	setMarks(t, m, changed...)
	if got, want := readMarks(t, c), wantMarks(changed...); !slices.Equal(got, want) {
		t.Errorf("after the resync:\ngot  %q\nwant %q", got, want)
	}
}

func TestKernelMarkerCloseRemovesTable(t *testing.T) {
	lbtest.RequireRoot(t)
	_, ns := lbtest.NewNetNS(t)
	m, err := NewNftMarker(WithMarkNetNS(ns), WithMarkTable(testMarkTable))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	setMarks(t, m, testMarks()...)
	c := readConn(t, ns)
	if tables, err := c.ListTables(); err != nil || len(tables) != 1 {
		t.Fatalf("tables before Close: %v, %v; want the marker's", tables, err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	if len(tables) != 0 {
		t.Errorf("%d tables left after Close, first %q", len(tables), tables[0].Name)
	}
	if err := m.SetMarks(context.Background(), testMarks()); err == nil {
		t.Error("SetMarks after Close: nil error")
	}
}

// counter is a rule of the test's counting table: packets of the hook that
// carry a mark (or, with unmarked, to a port and carrying none).
type counter struct {
	name     string
	hook     *nftables.ChainHook
	mark     uint32
	port     uint16 // with mark 0: count datagrams to port
	unmarked bool
}

// addCounters makes a table of its own in ns, after the marker's in each
// hook, with one counting rule per counter.
func addCounters(t *testing.T, c *nftables.Conn, cs []counter) *nftables.Table {
	t.Helper()
	tbl := c.AddTable(&nftables.Table{Name: "shoal-ipvs-mark-count", Family: nftables.TableFamilyINet})
	chains := map[*nftables.ChainHook]*nftables.Chain{}
	for _, h := range []*nftables.ChainHook{nftables.ChainHookPrerouting, nftables.ChainHookOutput} {
		chains[h] = c.AddChain(&nftables.Chain{Name: fmt.Sprint("hook", *h), Table: tbl, Type: nftables.ChainTypeFilter,
			Hooknum: h, Priority: nftables.ChainPriorityFilter})
	}
	for _, cn := range cs {
		var e []expr.Any
		if cn.port != 0 {
			e = append(e,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(cn.port)},
			)
		}
		if !cn.unmarked {
			e = append(e,
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: markKey(cn.mark)},
			)
		}
		e = append(e, &expr.Counter{})
		c.AddRule(&nftables.Rule{Table: tbl, Chain: chains[cn.hook], Exprs: e, UserData: []byte(cn.name)})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("add counting table: %v", err)
	}
	t.Cleanup(func() {
		c.DelTable(tbl)
		if err := c.Flush(); err != nil {
			t.Errorf("delete counting table: %v", err)
		}
	})
	return tbl
}

// readCounters returns each counting rule's packets by name.
func readCounters(t *testing.T, c *nftables.Conn, tbl *nftables.Table) map[string]uint64 {
	t.Helper()
	chains, err := c.ListChainsOfTableFamily(tbl.Family)
	if err != nil {
		t.Fatalf("list chains: %v", err)
	}
	out := map[string]uint64{}
	for _, ch := range chains {
		if ch.Table.Name != tbl.Name {
			continue
		}
		rules, err := c.GetRules(tbl, ch)
		if err != nil {
			t.Fatalf("list rules of %s: %v", ch.Name, err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					out[string(r.UserData)] = ctr.Packets
				}
			}
		}
	}
	return out
}

// TestKernelMarkerMarksPackets sends datagrams from a client namespace (and
// from the node itself) and counts, after the marker's chains, the packets
// that carry each frontend's mark.
func TestKernelMarkerMarksPackets(t *testing.T) {
	tp := lbtest.NewTopology(t, 0)
	m := newTestMarker(t, tp.RouterNS)
	vip := netip.MustParseAddr("10.231.9.9")
	setMarks(t, m,
		Mark{lb.Frontend{Name: "svc:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Masquerade: true}, 0x100},
		Mark{lb.Frontend{Name: "vip:dns:53/udp", Protocol: lb.UDP, Port: 53, VIP: vip}, 0x101},
		Mark{lb.Frontend{Name: "svc:web:5353/tcp", Protocol: lb.TCP, Port: 5353}, 0x102},
		Mark{lb.Frontend{Name: "vip:any:udp", Protocol: lb.UDP, VIP: vip}, 0x103},
	)
	c := readConn(t, tp.RouterNS)
	tbl := addCounters(t, c, []counter{
		{name: "published", hook: nftables.ChainHookPrerouting, mark: 0x100},
		{name: "vip", hook: nftables.ChainHookPrerouting, mark: 0x101},
		{name: "tcp mark on udp", hook: nftables.ChainHookPrerouting, mark: 0x102},
		{name: "local", hook: nftables.ChainHookOutput, mark: 0x100},
		{name: "other port", hook: nftables.ChainHookPrerouting, port: 6000, unmarked: true},
		{name: "other port marked", hook: nftables.ChainHookPrerouting, port: 6000, mark: 0x100},
		{name: "any-port vip", hook: nftables.ChainHookPrerouting, mark: 0x103},
	})

	// Nothing listens: the replies (port unreachable, or none) do not
	// matter, only what the router's hooks saw.
	lbtest.Request(t, tp.Client, "udp", netip.AddrPortFrom(lbtest.RouterAddr, 5353), 1)
	lbtest.Request(t, tp.Client, "udp", netip.AddrPortFrom(vip, 53), 1)
	lbtest.Request(t, tp.Client, "udp", netip.AddrPortFrom(lbtest.RouterAddr, 6000), 1)
	// Any other port of the VIP takes its any-port frontend's mark; port 53
	// above kept its own frontend's.
	lbtest.Request(t, tp.Client, "udp", netip.AddrPortFrom(vip, 6001), 1)
	got := readCounters(t, c, tbl)
	want := map[string]uint64{"published": 1, "vip": 1, "tcp mark on udp": 0, "local": 0, "other port": 1, "other port marked": 0, "any-port vip": 1}
	if !maps.Equal(got, want) {
		t.Errorf("packets from the client counted %v, want %v", got, want)
	}

	// The node's own datagram is marked in output; it then loops back
	// through prerouting on lo, where it is counted (and marked) again.
	lbtest.Request(t, tp.Router, "udp", netip.AddrPortFrom(lbtest.RouterAddr, 5353), 1)
	got = readCounters(t, c, tbl)
	want["local"], want["published"] = 1, 2
	if !maps.Equal(got, want) {
		t.Errorf("packets after one from the node counted %v, want %v", got, want)
	}
}

// TestKernelMarkerUnmarksOnlyItsRange gives datagrams the node sends each
// a mark before the marker sees them, and counts after the marker's unmark
// chain which leave still marked: the range's marks must be gone, anyone
// else's (the nft backend's 0x2000 among them) kept.
func TestKernelMarkerUnmarksOnlyItsRange(t *testing.T) {
	requireNft(t)
	tp := lbtest.NewTopology(t, 0)
	setMarks(t, newTestMarker(t, tp.RouterNS), testMarks()...)
	marks := []struct {
		mark uint32
		ours bool
	}{
		{FirstMark - 1, false},
		{FirstMark, true},
		{FirstMark + 0xff, true},
		{FirstMark + MaxMarks/2 + 3, true},
		{FirstMark + MaxMarks - 1, true},
		{FirstMark + MaxMarks, false},
		{0x2000, false}, // nft.DefaultMasqueradeMark
		{0x2100, false},
		{0x10100, false},
	}
	var set, count strings.Builder
	for i, m := range marks {
		port := 40000 + i
		fmt.Fprintf(&set, "\t\tudp dport %d meta mark set %#x\n", port, m.mark)
		fmt.Fprintf(&count, "\t\tudp dport %d meta mark %#x counter comment \"%d\"\n", port, m.mark, port)
	}
	nftScript(t, tp.Router, "shoal-test-unmark", fmt.Sprintf(`table inet shoal-test-unmark {
	chain before { type filter hook output priority -300;
%s	}
	chain after { type filter hook postrouting priority 300;
%s	}
}`, set.String(), count.String()))
	for i := range marks {
		// Nothing listens: only what left the router counts.
		lbtest.Request(t, tp.Router, "udp", netip.AddrPortFrom(lbtest.ClientAddr, uint16(40000+i)), 1)
	}
	for i, m := range marks {
		n := nftCounter(t, tp.Router, "shoal-test-unmark", fmt.Sprint(40000+i))
		if want := map[bool]uint64{true: 0, false: 1}[m.ours]; n != want {
			t.Errorf("datagrams leaving with mark %#x: %d, want %d (in the balancer's range: %v)", m.mark, n, want, m.ours)
		}
	}
}

var update = flag.Bool("update", false, "rewrite the golden files of the tests")

// markerTableGolden is embedded so that a test binary copied elsewhere (the
// VM tier) has it.
//
//go:embed testdata/marker-table.nft
var markerTableGolden string

// TestKernelMarkerTableGolden compares the marker's whole table, as nft
// lists it back from the kernel, with testdata/marker-table.nft (go test
// -run TestKernelMarkerTableGolden -update rewrites it). nft prints the
// marks of maps and of the unmark set byte-swapped on little-endian hosts
// (see the marker's layout comment); the kernel test above checks what they
// do.
func TestKernelMarkerTableGolden(t *testing.T) {
	requireNft(t)
	name, ns := lbtest.NewNetNS(t)
	setMarks(t, newTestMarker(t, ns), testMarks()...)
	got := nft(t, name, "", "list", "table", "inet", testMarkTable)
	if *update {
		if err := os.WriteFile(filepath.Join("testdata", "marker-table.nft"), []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if got != markerTableGolden {
		t.Errorf("the marker's table differs from testdata/marker-table.nft (if on purpose, rerun with -update and review the diff):\n%s", got)
	}
}

// TestKernelMarkerProgrammedMarks reads back, with a second marker as a
// restarted shoald would, the marks a first one programmed.
func TestKernelMarkerProgrammedMarks(t *testing.T) {
	lbtest.RequireRoot(t)
	_, ns := lbtest.NewNetNS(t)
	second := newTestMarker(t, ns)
	if ms, err := second.ProgrammedMarks(); err != nil || len(ms) != 0 {
		t.Fatalf("ProgrammedMarks without a table: %v, %v; want none", ms, err)
	}
	setMarks(t, newTestMarker(t, ns), testMarks()...)
	got, err := second.ProgrammedMarks()
	if err != nil {
		t.Fatalf("ProgrammedMarks: %v", err)
	}
	key := func(mk Mark) string {
		return fmt.Sprintf("%s %s masq=%v %#x", mk.Frontend.Name, lb.Key(mk.Frontend), mk.Frontend.Masquerade, mk.Mark)
	}
	var g, w []string
	for _, mk := range got {
		g = append(g, key(mk))
	}
	for _, mk := range testMarks() {
		w = append(w, key(mk))
	}
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Errorf("ProgrammedMarks:\n%s\nwant\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
}

// TestKernelMarkerHairpinSets checks that the hairpin sets hold "b . b" for
// every backend address of any frontend, and that a change touches them only
// when an address first appears or last goes.
func TestKernelMarkerHairpinSets(t *testing.T) {
	lbtest.RequireRoot(t)
	_, ns := lbtest.NewNetNS(t)
	m := newTestMarker(t, ns)
	c := readConn(t, ns)
	web := lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080,
		Backends: []lb.Backend{be("10.231.0.10:80"), be("10.231.0.11:80")}}
	vip := lb.Frontend{Name: "vip:web6:80/tcp", Protocol: lb.TCP, Port: 80, VIP: netip.MustParseAddr("fd00:231::9"),
		Backends: []lb.Backend{be("[fd00:231::10]:80")}}
	other := lb.Frontend{Name: "svc:other:9000/tcp", Protocol: lb.TCP, Port: 9000, Backends: []lb.Backend{be("10.231.0.11:9000")}}
	hairpin := func() []string {
		tbl := &nftables.Table{Name: testMarkTable, Family: nftables.TableFamilyINet}
		var out []string
		for _, name := range []string{markSetHairpin4, markSetHairpin6} {
			s, err := c.GetSetByName(tbl, name)
			if err != nil {
				t.Fatal(err)
			}
			es, err := c.GetSetElements(s)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range es {
				a, _ := netip.AddrFromSlice(e.Key[:len(e.Key)/2])
				b, _ := netip.AddrFromSlice(e.Key[len(e.Key)/2:])
				out = append(out, a.String()+" . "+b.String())
			}
		}
		slices.Sort(out)
		return out
	}
	setMarks(t, m, Mark{web, 0x100}, Mark{vip, 0x101}, Mark{other, 0x102})
	want := []string{"10.231.0.10 . 10.231.0.10", "10.231.0.11 . 10.231.0.11", "fd00:231::10 . fd00:231::10"}
	if got := hairpin(); !slices.Equal(got, want) {
		t.Errorf("hairpin sets %q, want %q", got, want)
	}
	w := watchCommits(t, ns)
	// 10.231.0.11 stays (other has it); 10.231.0.10 goes.
	web.Backends = web.Backends[1:]
	setMarks(t, m, Mark{web, 0x100}, Mark{vip, 0x101}, Mark{other, 0x102})
	if got, want := w.next(t), []string{"del element " + hex.EncodeToString(netip.MustParseAddr("10.231.0.10").AsSlice()) + hex.EncodeToString(netip.MustParseAddr("10.231.0.10").AsSlice())}; !slices.Equal(got, want) {
		t.Errorf("removing a backend changed %q, want %q", got, want)
	}
	setMarks(t, m)
	if got := hairpin(); len(got) != 0 {
		t.Errorf("hairpin sets without frontends: %q", got)
	}
}
