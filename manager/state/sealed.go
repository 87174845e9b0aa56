package state

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
	"github.com/shoal-project/shoal/seal"
)

// sealedLogs is a raft log store whose entries' data is sealed on the way
// to disk and opened on the way back: raft, the FSM and the transport see
// plaintext; raft.db holds none. Each entry's data is bound to its index
// and type, so entries cannot be swapped on disk unnoticed.
type sealedLogs struct {
	raft.LogStore
	s seal.Sealer
}

func logAD(l *raft.Log) []byte {
	ad := make([]byte, 0, 32)
	ad = append(ad, "shoal/raft/log"...)
	ad = binary.BigEndian.AppendUint64(ad, l.Index)
	return append(ad, byte(l.Type))
}

// sealLog returns a sealed copy of l: raft keeps l (for the followers,
// the FSM), so it must stay as it is.
func (s *sealedLogs) sealLog(l *raft.Log) *raft.Log {
	c := *l
	if len(l.Data) > 0 {
		c.Data = s.s.Seal(l.Data, logAD(l))
	}
	if len(l.Extensions) > 0 {
		c.Extensions = s.s.Seal(l.Extensions, append(logAD(l), 'x'))
	}
	return &c
}

func (s *sealedLogs) GetLog(index uint64, l *raft.Log) error {
	if err := s.LogStore.GetLog(index, l); err != nil {
		return err
	}
	var err error
	if len(l.Data) > 0 {
		if l.Data, err = s.s.Open(l.Data, logAD(l)); err != nil {
			return fmt.Errorf("raft log entry %d %w: remove this manager and join it again, or recover from another (see docs/security.md)", index, err)
		}
	}
	if len(l.Extensions) > 0 {
		if l.Extensions, err = s.s.Open(l.Extensions, append(logAD(l), 'x')); err != nil {
			return fmt.Errorf("raft log entry %d extensions %w", index, err)
		}
	}
	return nil
}

func (s *sealedLogs) StoreLog(l *raft.Log) error {
	return s.LogStore.StoreLog(s.sealLog(l))
}

func (s *sealedLogs) StoreLogs(logs []*raft.Log) error {
	sealed := make([]*raft.Log, len(logs))
	for i, l := range logs {
		sealed[i] = s.sealLog(l)
	}
	return s.LogStore.StoreLogs(sealed)
}

// sealedSnapshots is a snapshot store whose snapshots are sealed whole.
// A snapshot is the store, which every manager holds in memory anyway, so
// it is buffered rather than streamed; its size in the metadata raft sees
// is the plaintext's, as InstallSnapshot checks it against what it reads.
type sealedSnapshots struct {
	inner raft.SnapshotStore
	dir   string // the snapshots directory, for its modes
	s     seal.Sealer
}

func snapshotAD(index, term uint64) []byte {
	ad := append([]byte(nil), "shoal/raft/snapshot"...)
	ad = binary.BigEndian.AppendUint64(ad, index)
	return binary.BigEndian.AppendUint64(ad, term)
}

func (s *sealedSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration, configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.inner.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	return &sealingSink{SnapshotSink: sink, store: s, ad: snapshotAD(index, term)}, nil
}

func (s *sealedSnapshots) List() ([]*raft.SnapshotMeta, error) {
	metas, err := s.inner.List()
	for _, m := range metas {
		m.Size = max(m.Size-seal.Overhead, 0)
	}
	return metas, err
}

func (s *sealedSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.inner.Open(id)
	if err != nil {
		return nil, nil, err
	}
	defer rc.Close()
	sealed, err := io.ReadAll(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("read snapshot %s: %w", id, err)
	}
	plain, err := s.s.Open(sealed, snapshotAD(meta.Index, meta.Term))
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot %s %w", id, err)
	}
	meta.Size = int64(len(plain))
	return meta, io.NopCloser(bytes.NewReader(plain)), nil
}

// sealingSink collects a snapshot and writes it sealed on Close.
type sealingSink struct {
	raft.SnapshotSink
	store *sealedSnapshots
	ad    []byte
	buf   bytes.Buffer
}

func (k *sealingSink) Write(p []byte) (int, error) { return k.buf.Write(p) }

func (k *sealingSink) Close() error {
	sealed := k.store.s.Seal(k.buf.Bytes(), k.ad)
	k.buf.Reset()
	if _, err := k.SnapshotSink.Write(sealed); err != nil {
		k.SnapshotSink.Cancel()
		return fmt.Errorf("write sealed snapshot: %w", err)
	}
	if err := k.SnapshotSink.Close(); err != nil {
		return err
	}
	// hashicorp/raft makes snapshot directories 0755 and files with the
	// umask's modes.
	return tightenModes(filepath.Join(k.store.dir, k.ID()))
}

func (k *sealingSink) Cancel() error {
	k.buf.Reset()
	return k.SnapshotSink.Cancel()
}

// snapshotsDir is where raft.NewFileSnapshotStore keeps snapshots under
// a base directory.
func snapshotsDir(base string) string { return filepath.Join(base, "snapshots") }

// dirExists reports whether path is a directory.
func dirExists(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.IsDir()
}
