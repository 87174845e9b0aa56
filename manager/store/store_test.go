package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func svc(id, name string) *api.Service {
	return &api.Service{Id: id, Spec: &api.ServiceSpec{Name: name}}
}

func TestApply(t *testing.T) {
	s := New()
	must := func(idx uint64, acts ...*api.StoreAction) {
		t.Helper()
		if err := s.Apply(idx, &api.Command{Actions: acts}); err != nil {
			t.Fatalf("apply %d: %v", idx, err)
		}
	}
	must(1, Create(svc("s1", "web")), Create(&api.Task{Id: "t1", ServiceId: "s1", NodeId: "n1"}))

	var web *api.Service
	s.View(func(tx ReadTx) { web = tx.ServiceByName("web") })
	if web.GetMeta().GetVersion() != 1 {
		t.Fatalf("version after create = %d, want 1", web.GetMeta().GetVersion())
	}

	tests := []struct {
		name string
		acts []*api.StoreAction
		want error
	}{
		{"duplicate id", []*api.StoreAction{Create(svc("s1", "other"))}, ErrExist},
		{"duplicate name", []*api.StoreAction{Create(svc("s2", "web"))}, ErrExist},
		{"update missing", []*api.StoreAction{Update(svc("nope", "x"))}, ErrNotFound},
		{"remove missing", []*api.StoreAction{Remove(&api.Task{Id: "nope"})}, ErrNotFound},
		{"stale update", []*api.StoreAction{Update(&api.Service{Id: "s1", Meta: &api.Meta{Version: 0}, Spec: &api.ServiceSpec{Name: "web"}})}, ErrSequenceConflict},
		{"no id", []*api.StoreAction{Create(&api.Task{})}, ErrInvalidAction},
		// The first action is fine; the second fails, so neither may land.
		{"atomic", []*api.StoreAction{Create(svc("s3", "api")), Create(svc("s1", "dup"))}, ErrExist},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Snapshot()
			err := s.Apply(uint64(10+i), &api.Command{Actions: tc.acts})
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if after := s.Snapshot(); !proto.Equal(before, after) {
				t.Fatalf("failed command changed the store:\nbefore %v\nafter  %v", before, after)
			}
		})
	}

	upd := proto.Clone(web).(*api.Service)
	upd.Spec.Labels = map[string]string{"a": "b"}
	must(20, Update(upd))
	s.View(func(tx ReadTx) {
		got := tx.Service("s1")
		if got.GetMeta().GetVersion() != 20 || got.GetSpec().GetLabels()["a"] != "b" {
			t.Fatalf("after update: %v", got)
		}
		if n := len(tx.TasksOfNode("n1")); n != 1 {
			t.Fatalf("tasks of n1 = %d, want 1", n)
		}
	})
	must(21, Remove(&api.Task{Id: "t1"}))
	s.View(func(tx ReadTx) {
		if len(tx.TasksOfService("s1")) != 0 {
			t.Fatal("task still there after remove")
		}
	})
}

func TestLookupService(t *testing.T) {
	s := New()
	if err := s.Apply(1, &api.Command{Actions: []*api.StoreAction{
		Create(svc("abc123", "web")), Create(svc("abd456", "api")),
	}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ ref, wantID, wantErr string }{
		{"web", "abc123", ""},
		{"abc123", "abc123", ""},
		{"abd", "abd456", ""},
		{"ab", "", "ambiguous"},
		{"zzz", "", "not found"},
		{"", "", "empty"},
	} {
		s.View(func(tx ReadTx) {
			got, err := tx.LookupService(tc.ref)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("LookupService(%q) err = %v, want %q", tc.ref, err, tc.wantErr)
				}
				return
			}
			if err != nil || got.GetId() != tc.wantID {
				t.Errorf("LookupService(%q) = %v, %v; want %s", tc.ref, got.GetId(), err, tc.wantID)
			}
		})
	}
}

func TestSubscribe(t *testing.T) {
	s := New()
	sub := s.Subscribe()
	defer sub.Close()
	for i := 1; i <= 3; i++ {
		if err := s.Apply(uint64(i), &api.Command{Actions: []*api.StoreAction{Create(&api.Task{Id: fmt.Sprint(i)})}}); err != nil {
			t.Fatal(err)
		}
	}
	<-sub.Ready()
	changes := sub.Next()
	if len(changes) != 3 || changes[2].Index != 3 || len(changes[0].Events) != 1 {
		t.Fatalf("changes = %+v", changes)
	}
}

// TestSubscribeBounded lets a bounded feed fall behind: past its limit it
// holds one Reset instead of the changes, whatever comes after, and
// queues normally again once read.
func TestSubscribeBounded(t *testing.T) {
	s := New()
	sub := s.SubscribeBounded(3)
	defer sub.Close()
	apply := func(from, to int) {
		for i := from; i <= to; i++ {
			if err := s.Apply(uint64(i), &api.Command{Actions: []*api.StoreAction{Create(&api.Task{Id: fmt.Sprint(i)})}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	apply(1, 3)
	if changes := sub.Next(); len(changes) != 3 || changes[0].Reset {
		t.Fatalf("within the limit: %+v, want the 3 changes", changes)
	}
	apply(4, 1000)
	changes := sub.Next()
	if len(changes) != 1 || !changes[0].Reset || changes[0].Index != 1000 {
		t.Fatalf("past the limit: %d changes (%+v), want one Reset at 1000", len(changes), changes[0])
	}
	apply(1001, 1001)
	if changes := sub.Next(); len(changes) != 1 || changes[0].Reset {
		t.Fatalf("after reading: %+v, want the change", changes)
	}
}

// TestHostnamesUnique: a node may not take a hostname another node holds
// (in any case), neither when created nor when renamed; an update that
// keeps its hostname passes.
func TestHostnamesUnique(t *testing.T) {
	s := New()
	node := func(id, host string, version uint64) *api.Node {
		return &api.Node{Id: id, Meta: &api.Meta{Version: version}, Description: &api.NodeDescription{Hostname: host}}
	}
	apply := func(i uint64, a *api.StoreAction) error {
		return s.Apply(i, &api.Command{Actions: []*api.StoreAction{a}})
	}
	if err := apply(1, Create(node("a", "web-1", 0))); err != nil {
		t.Fatal(err)
	}
	if err := apply(2, Create(node("b", "WEB-1", 0))); !errors.Is(err, ErrExist) {
		t.Errorf("create with a taken hostname: %v, want ErrExist", err)
	}
	if err := apply(3, Create(node("b", "web-2", 0))); err != nil {
		t.Fatal(err)
	}
	if err := apply(4, Update(node("b", "web-1", 3))); !errors.Is(err, ErrExist) {
		t.Errorf("rename to a taken hostname: %v, want ErrExist", err)
	}
	if err := apply(5, Update(node("a", "web-1", 1))); err != nil {
		t.Errorf("update keeping the hostname: %v", err)
	}
}

func TestSnapshotRestore(t *testing.T) {
	s := New()
	for i := 1; i <= 100; i++ {
		if err := s.Apply(uint64(i), &api.Command{Actions: []*api.StoreAction{
			Create(&api.Task{Id: fmt.Sprintf("t%03d", i), ServiceId: "s", NodeId: "n"}),
		}}); err != nil {
			t.Fatal(err)
		}
	}
	snap := s.Snapshot()
	r := New()
	if err := r.Restore(100, snap); err != nil {
		t.Fatal(err)
	}
	if got := r.Snapshot(); !proto.Equal(snap, got) {
		t.Fatal("restored store differs")
	}
	r.View(func(tx ReadTx) {
		if n := len(tx.TasksOfNode("n")); n != 100 {
			t.Fatalf("node index after restore: %d tasks", n)
		}
	})
}

func netw(id, name, subnet string) *api.Network {
	return &api.Network{Id: id, Spec: &api.NetworkSpec{Name: name}, Subnet: subnet, Vni: 4096}
}

func TestNetworks(t *testing.T) {
	s := New()
	if err := s.Apply(1, &api.Command{Actions: []*api.StoreAction{
		Create(netw("abc123", "backend", "10.20.0.0/24")),
		Create(netw("abd456", "frontend", "10.21.0.0/24")),
		// A service may share a network's name: names are unique per table.
		Create(svc("s1", "backend")),
	}}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		act  *api.StoreAction
		want error
	}{
		{"duplicate id", Create(netw("abc123", "other", "")), ErrExist},
		{"duplicate name", Create(netw("n3", "backend", "")), ErrExist},
		{"rename onto another", Update(&api.Network{Id: "abd456", Meta: &api.Meta{Version: 1}, Spec: &api.NetworkSpec{Name: "backend"}}), ErrExist},
		{"remove missing", Remove(&api.Network{Id: "nope"}), ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Snapshot()
			if err := s.Apply(2, &api.Command{Actions: []*api.StoreAction{tc.act}}); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if after := s.Snapshot(); !proto.Equal(before, after) {
				t.Fatal("failed command changed the store")
			}
		})
	}

	s.View(func(tx ReadTx) {
		if n := tx.NetworkByName("backend"); n.GetId() != "abc123" || n.GetMeta().GetVersion() != 1 {
			t.Errorf("NetworkByName(backend) = %v", n)
		}
		if got := len(tx.Networks()); got != 2 {
			t.Errorf("Networks() has %d, want 2", got)
		}
		for _, tc := range []struct{ ref, wantID, wantErr string }{
			{"frontend", "abd456", ""},
			{"abc123", "abc123", ""},
			{"abd", "abd456", ""},
			{"ab", "", "ambiguous"},
			{"zzz", "", "not found"},
			{"", "", "empty"},
		} {
			got, err := tx.LookupNetwork(tc.ref)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("LookupNetwork(%q) err = %v, want %q", tc.ref, err, tc.wantErr)
				}
				continue
			}
			if err != nil || got.GetId() != tc.wantID {
				t.Errorf("LookupNetwork(%q) = %v, %v; want %s", tc.ref, got.GetId(), err, tc.wantID)
			}
		}
	})

	snap := s.Snapshot()
	if len(snap.GetNetworks()) != 2 {
		t.Fatalf("snapshot has %d networks, want 2", len(snap.GetNetworks()))
	}
	r := New()
	if err := r.Restore(1, snap); err != nil {
		t.Fatal(err)
	}
	r.View(func(tx ReadTx) {
		if n := tx.NetworkByName("frontend"); n.GetId() != "abd456" {
			t.Errorf("name index after restore: %v", n)
		}
	})

	if err := s.Apply(3, &api.Command{Actions: []*api.StoreAction{Remove(&api.Network{Id: "abc123"})}}); err != nil {
		t.Fatal(err)
	}
	s.View(func(tx ReadTx) {
		if tx.NetworkByName("backend") != nil || tx.Network("abc123") != nil {
			t.Error("network still there after remove")
		}
	})
}
