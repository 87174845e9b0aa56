package state

import (
	"fmt"
	"io"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// fsm is raft's view of the store: Apply, Snapshot, Restore, nothing more.
type fsm struct {
	store *store.Store
}

// Apply returns the store's error (or nil) as the log entry's response, so
// the proposer learns whether its command took effect.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var cmd api.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		return fmt.Errorf("decode raft command at index %d: %w", l.Index, err)
	}
	return f.store.Apply(l.Index, &cmd)
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	// raft calls Snapshot between two Applies, so the index is exactly
	// that of the objects.
	idx := f.store.Index()
	data := f.store.Snapshot()
	data.Index = idx
	return &snapshot{data: data}, nil
}

func (f *fsm) Restore(r io.ReadCloser) error {
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	var snap api.StoreSnapshot
	if err := proto.Unmarshal(b, &snap); err != nil {
		return fmt.Errorf("decode snapshot: %w", err)
	}
	// The snapshot's own index: a member that installs a leader's
	// snapshot has applied everything up to it, and a forwarded write
	// waiting for an index the snapshot covers must see it as applied.
	return f.store.Restore(snap.GetIndex(), &snap)
}

// snapshot holds the store's objects as they were when raft asked; the
// objects are immutable, so Persist may run while the store moves on.
type snapshot struct {
	data *api.StoreSnapshot
}

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	b, err := proto.Marshal(s.data)
	if err == nil {
		_, err = sink.Write(b)
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
