package state

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// memSink is a raft.SnapshotSink in memory.
type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// TestRestoreKnowsItsIndex: a member that installs a snapshot (a follower
// catching up from the leader's, a restart) has applied the log up to the
// snapshot's index. A forwarded write covered by the snapshot must not
// wait for a later entry to see itself applied (it once waited for ever on
// a quiet cluster: the restored store said index 0).
func TestRestoreKnowsItsIndex(t *testing.T) {
	leader := &fsm{store: store.New()}
	const idx = 42
	cmd := &api.Command{Actions: []*api.StoreAction{store.Create(&api.Service{Id: "s1", Spec: &api.ServiceSpec{Name: "web"}})}}
	if err := leader.store.Apply(idx, cmd); err != nil {
		t.Fatal(err)
	}
	snap, err := leader.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}

	follower := &Node{store: store.New()}
	f := &fsm{store: follower.store}
	if err := f.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if got := follower.store.Index(); got != idx {
		t.Errorf("store index after restore %d, want %d", got, idx)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := follower.WaitApplied(ctx, idx); err != nil {
		t.Errorf("a write the snapshot holds: %v", err)
	}
	var svc *api.Service
	follower.store.View(func(tx store.ReadTx) { svc = tx.Service("s1") })
	if svc == nil {
		t.Error("the snapshot's service is missing")
	}
}
