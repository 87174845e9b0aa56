package state

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/shoal-project/shoal/seal"
	"golang.org/x/sys/unix"
)

// sealingDir is where the sealed copy of a plaintext raft state is built.
func sealingDir(dir string) string { return filepath.Clean(dir) + ".sealing" }

// stableKeys are the keys hashicorp/raft keeps in its stable store: the
// term and the vote, which must survive the copy for raft's safety.
var stableUint64Keys, stableKeys = []string{"CurrentTerm", "LastVoteTerm"}, []string{"LastVoteCand"}

// migrateBatch is how many log entries are copied per write.
const migrateBatch = 512

// sealPlaintext encrypts the raft state an older shoald wrote in
// plaintext in cfg.Dir: it builds a sealed copy beside it (new keys, the
// stable store, every log entry, every snapshot) and swaps the two
// directories atomically, then removes the plaintext. It copies into a new
// bolt file rather than rewriting entries in place because bolt's freed
// pages would keep the plaintext.
func sealPlaintext(cfg Config) error {
	dir, tmp := cfg.Dir, sealingDir(cfg.Dir)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	keys, err := createKeys(tmp, nil)
	if err != nil {
		return err
	}
	if err := copySealed(cfg, keys, tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	// One atomic exchange: a crash leaves either the plaintext in place
	// (and a partial copy) or the sealed state in place (and the
	// plaintext beside it); openKeys removes the leftover either way.
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dir, unix.RENAME_EXCHANGE); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("swap in the encrypted state: %w", err)
	}
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove the unencrypted state (now in %s): %w", tmp, err)
	}
	return nil
}

func copySealed(cfg Config, keys *keyring, tmp string) error {
	old, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db")})
	if err != nil {
		return fmt.Errorf("open raft log: %w", err)
	}
	defer old.Close()
	nb, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(tmp, "raft.db")})
	if err != nil {
		return fmt.Errorf("create raft log: %w", err)
	}
	defer nb.Close()
	for _, k := range stableUint64Keys {
		v, err := old.GetUint64([]byte(k))
		if err == nil {
			err = nb.SetUint64([]byte(k), v)
		}
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("copy %s: %w", k, err)
		}
	}
	for _, k := range stableKeys {
		v, err := old.Get([]byte(k))
		if err == nil {
			err = nb.Set([]byte(k), v)
		}
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("copy %s: %w", k, err)
		}
	}
	logs := &sealedLogs{LogStore: nb, s: seal.New(keys.dek)}
	first, err := old.FirstIndex()
	if err != nil {
		return err
	}
	last, err := old.LastIndex()
	if err != nil {
		return err
	}
	var batch []*raft.Log
	for i := first; first > 0 && i <= last; i++ {
		l := new(raft.Log)
		if err := old.GetLog(i, l); err != nil {
			return fmt.Errorf("read log entry %d: %w", i, err)
		}
		if l.Type == raft.LogCommand && seal.LooksSealed(l.Data) {
			return fmt.Errorf("log entry %d: %w", i, errKeysLost)
		}
		batch = append(batch, l)
		if len(batch) == migrateBatch || i == last {
			if err := logs.StoreLogs(batch); err != nil {
				return fmt.Errorf("write log entries up to %d: %w", i, err)
			}
			batch = batch[:0]
		}
	}

	oldSnaps, err := raft.NewFileSnapshotStore(cfg.Dir, snapshotRetain, io.Discard)
	if err != nil {
		return err
	}
	snaps, err := openSnapshots(tmp, keys.dek)
	if err != nil {
		return err
	}
	metas, err := oldSnaps.List()
	if err != nil {
		return err
	}
	// Oldest first, so that the store's retention keeps the same ones.
	for i := len(metas) - 1; i >= 0; i-- {
		if err := copySnapshot(oldSnaps, snaps, metas[i], cfg.Transport); err != nil {
			return fmt.Errorf("copy snapshot %s: %w", metas[i].ID, err)
		}
	}
	return tightenModes(tmp)
}

func copySnapshot(from raft.SnapshotStore, to raft.SnapshotStore, m *raft.SnapshotMeta, trans raft.Transport) error {
	meta, rc, err := from.Open(m.ID)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if seal.LooksSealed(data) {
		return errKeysLost
	}
	sink, err := to.Create(meta.Version, meta.Index, meta.Term, meta.Configuration, meta.ConfigurationIndex, trans)
	if err != nil {
		return err
	}
	if _, err := sink.Write(data); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

// errKeysLost: the state is encrypted, but its keys.json is gone.
var errKeysLost = errors.New("it is encrypted, but its keys (keys.json) are gone: the state cannot be read; remove this manager (shoalctl node demote, node rm --force) and join it again")

func isNotFound(err error) bool {
	return errors.Is(err, raftboltdb.ErrKeyNotFound)
}
