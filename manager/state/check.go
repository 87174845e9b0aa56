package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// ErrDamaged is returned by Open when the raft state on disk fails its
// checks: this member refuses to start rather than serve a store that is
// not the one the cluster agreed on. docs/recovery.md says how to recover
// (rejoin, or another snapshot).
var ErrDamaged = errors.New("the raft state on disk is damaged")

// recoveryHint ends every ErrDamaged message.
const recoveryHint = "this manager will not serve it. With other managers: stop shoald, move the raft dir aside and start shoald again to rejoin with a fresh copy from the leader; a lone manager needs a copy of its data dir (see docs/recovery.md, \"A damaged raft store\")"

func damaged(dir, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s; %s", ErrDamaged, dir, fmt.Sprintf(format, args...), recoveryHint)
}

// Every log entry carries a checksum in its Extensions (which hashicorp/raft
// leaves to middleware like this): bbolt checksums only its meta pages,
// so a flipped bit in an entry would otherwise be applied as a different
// command. The tag is followed by a CRC-32C of the entry and then the
// entry's own Extensions.
var (
	checksumTag   = []byte("shoal-crc1:")
	checksumTable = crc32.MakeTable(crc32.Castagnoli)
)

func logChecksum(l *raft.Log, ext []byte) uint32 {
	var hdr [17]byte
	binary.BigEndian.PutUint64(hdr[0:], l.Index)
	binary.BigEndian.PutUint64(hdr[8:], l.Term)
	hdr[16] = byte(l.Type)
	c := crc32.Update(0, checksumTable, hdr[:])
	c = crc32.Update(c, checksumTable, l.Data)
	return crc32.Update(c, checksumTable, ext)
}

// checksummedLogs adds the checksum on the way to the disk and checks and
// strips it on the way back, so raft (and the followers it replicates to)
// sees entries as they were proposed.
type checksummedLogs struct {
	raft.LogStore
}

func (s checksummedLogs) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s checksummedLogs) StoreLogs(logs []*raft.Log) error {
	out := make([]*raft.Log, len(logs))
	for i, l := range logs {
		c := *l // raft keeps its own entries: leave them as they are
		ext := make([]byte, 0, len(checksumTag)+4+len(l.Extensions))
		ext = append(ext, checksumTag...)
		ext = binary.BigEndian.AppendUint32(ext, logChecksum(l, l.Extensions))
		c.Extensions = append(ext, l.Extensions...)
		out[i] = &c
	}
	return s.LogStore.StoreLogs(out)
}

func (s checksummedLogs) GetLog(idx uint64, l *raft.Log) error {
	if err := s.LogStore.GetLog(idx, l); err != nil {
		return err
	}
	if l.Index != idx {
		return fmt.Errorf("%w: log entry %d is stored as %d", ErrDamaged, idx, l.Index)
	}
	if len(l.Extensions) == 0 {
		// Written before entries carried checksums.
		return nil
	}
	n := len(checksumTag) + 4
	if len(l.Extensions) < n || !bytes.HasPrefix(l.Extensions, checksumTag) {
		return fmt.Errorf("%w: log entry %d has no valid checksum", ErrDamaged, idx)
	}
	want := binary.BigEndian.Uint32(l.Extensions[len(checksumTag):])
	ext := l.Extensions[n:]
	if len(ext) == 0 {
		ext = nil
	}
	if got := logChecksum(l, ext); got != want {
		return fmt.Errorf("%w: log entry %d fails its checksum", ErrDamaged, idx)
	}
	l.Extensions = ext
	return nil
}

// checkBolt walks every page of raft.db with bbolt's own consistency
// check before raft-boltdb opens it: a damaged page would otherwise panic
// deep inside raft, or be read as data.
func checkBolt(path string) (err error) {
	if _, serr := os.Stat(path); errors.Is(serr, os.ErrNotExist) {
		return nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("open: %v", err)
	}
	defer db.Close()
	defer func() {
		// bbolt panics on some damaged pages rather than report them.
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return db.View(func(tx *bolt.Tx) error {
		var errs []string
		for e := range tx.Check() {
			if len(errs) < 3 {
				errs = append(errs, e.Error())
			}
		}
		if len(errs) > 0 {
			return errors.New(strings.Join(errs, "; "))
		}
		return nil
	})
}

// verifyLogs reads every entry of the log, checking checksums and that
// the indexes run without a gap.
func verifyLogs(logs raft.LogStore) (first, last uint64, err error) {
	first, err = logs.FirstIndex()
	if err != nil {
		return 0, 0, err
	}
	last, err = logs.LastIndex()
	if err != nil {
		return 0, 0, err
	}
	if last == 0 {
		return 0, 0, nil
	}
	var l raft.Log
	for i := first; i <= last; i++ {
		if err := logs.GetLog(i, &l); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				return 0, 0, fmt.Errorf("log entry %d of %d..%d is missing", i, first, last)
			}
			return 0, 0, err
		}
	}
	return first, last, nil
}

// verifySnapshots finds the newest snapshot that is whole (readable
// metadata, state matching its CRC): raft restores that one. Damaged ones
// are moved to <dir>/damaged, out of raft's way, and returned.
func verifySnapshots(dir string, snaps *raft.FileSnapshotStore, logger *slog.Logger) (good *raft.SnapshotMeta, bad []*raft.SnapshotMeta, err error) {
	listed, err := snaps.List()
	if err != nil {
		return nil, nil, fmt.Errorf("list snapshots: %w", err)
	}
	known := map[string]bool{}
	for _, m := range listed {
		known[m.ID] = true
	}
	entries, err := os.ReadDir(filepath.Join(dir, "snapshots"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("read snapshots: %w", err)
	}
	var unreadable []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") && !known[e.Name()] {
			unreadable = append(unreadable, e.Name())
		}
	}
	if len(unreadable) > 0 {
		// A snapshot whose metadata cannot be read may well be the newest:
		// its index is unknown, so nothing can be proven about the log.
		sort.Strings(unreadable)
		return nil, nil, fmt.Errorf("snapshot %s has unreadable metadata", strings.Join(unreadable, ", "))
	}
	for _, m := range listed {
		_, rc, oerr := snaps.Open(m.ID)
		if oerr == nil {
			rc.Close()
			if good == nil {
				good = m
			}
			continue
		}
		if good != nil {
			// An older one than raft needs: damaged, but never read.
			logger.Warn("an old raft snapshot is damaged", "dir", dir, "snapshot", m.ID, "err", oerr)
			continue
		}
		bad = append(bad, m)
	}
	return good, bad, nil
}

// moveAside keeps a damaged snapshot for inspection where raft no longer
// sees it.
func moveAside(dir string, m *raft.SnapshotMeta) error {
	to := filepath.Join(dir, "damaged")
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}
	return os.Rename(filepath.Join(dir, "snapshots", m.ID), filepath.Join(to, m.ID))
}

// verifyState checks a member's raft state before raft reads it: the
// bbolt file, every log entry, and that a whole snapshot plus the log
// rebuild everything this member had. A damaged newest snapshot is
// survivable when an older one and the log after it still cover it;
// otherwise Open refuses with ErrDamaged.
func verifyState(dir string, logs raft.LogStore, snaps *raft.FileSnapshotStore, logger *slog.Logger) error {
	first, last, err := verifyLogs(logs)
	if err != nil {
		return damaged(dir, "raft.db: %v", err)
	}
	good, bad, err := verifySnapshots(dir, snaps, logger)
	if err != nil {
		return damaged(dir, "%v", err)
	}
	var base uint64
	if good != nil {
		base = good.Index
	}
	if last > base && first > base+1 {
		what := "no snapshot"
		if good != nil {
			what = "snapshot " + good.ID
		}
		if len(bad) > 0 {
			return damaged(dir, "snapshot %s fails its checksum, and the log (%d..%d) does not reach back to %s", bad[0].ID, first, last, what)
		}
		return damaged(dir, "the log (%d..%d) does not reach back to %s", first, last, what)
	}
	for _, b := range bad {
		if max(last, base) < b.Index {
			return damaged(dir, "snapshot %s (index %d) fails its checksum, and nothing else holds the state up to it", b.ID, b.Index)
		}
	}
	for _, b := range bad {
		if err := moveAside(dir, b); err != nil {
			return fmt.Errorf("move damaged snapshot %s aside: %w", b.ID, err)
		}
		logger.Warn("a raft snapshot is damaged: restoring from an older one and the log, which cover it; the damaged one is kept under damaged/",
			"dir", dir, "snapshot", b.ID, "index", b.Index)
	}
	return nil
}
