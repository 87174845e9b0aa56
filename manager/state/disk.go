package state

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	"golang.org/x/sys/unix"
)

// ErrDiskFull is returned by Propose while the raft data dir has no room:
// the manager keeps serving reads and raft's own small writes (terms,
// votes, leader no-ops) from the reserve, and takes writes again by itself
// once space is freed.
var ErrDiskFull = errors.New("the raft data dir is full")

// DefaultReserveBytes is the space held back in the raft dir (the file
// reserveName) and given up when a write fails for lack of room. hashicorp/raft
// panics when it cannot persist a new term or vote; a term or vote costs a
// few 4 KiB bolt pages, so 16 MiB covers thousands of elections while the
// disk stays full, and is small next to any disk a manager should run on.
const DefaultReserveBytes = 16 << 20

// reserveName is the reserve file in the raft dir.
const reserveName = "raft.reserve"

// spaceCheckInterval is how often a full raft dir is checked for room
// again: often enough that writes resume within about a second of space
// being freed, rarely enough to cost nothing.
const spaceCheckInterval = time.Second

// isNoSpace reports whether err is the file system running out of room
// (ENOSPC, or EDQUOT for a quota). bbolt formats some errors with %s,
// losing the errno, hence the text match as well.
func isNoSpace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, syscall.ENOSPC.Error()) || strings.Contains(s, syscall.EDQUOT.Error())
}

// diskGuard keeps the raft dir writable for raft's own bookkeeping when
// the file system fills: it holds a reserve file, gives it up on the first
// write that fails for lack of room, refuses commands (which are what
// fills a log) until the file system has room for the reserve again, and
// then lets writes resume.
type diskGuard struct {
	dir     string
	reserve int64
	logger  *slog.Logger
	// full is set from the first no-space error until the reserve is
	// back; cause is the error that set it.
	full   atomic.Bool
	mu     sync.Mutex
	cause  error
	since  time.Time
	trips  chan struct{}
	stop   chan struct{}
	done   chan struct{}
	closed sync.Once
}

func newDiskGuard(dir string, reserve int64, logger *slog.Logger) *diskGuard {
	g := &diskGuard{
		dir: dir, reserve: reserve, logger: logger,
		trips: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	if err := g.makeReserve(); err != nil {
		// A dir that is already full starts refusing writes rather than
		// refusing to start: reads can still be served.
		g.trip(fmt.Errorf("hold %d bytes in reserve: %w", reserve, err))
	}
	go g.watch()
	return g
}

func (g *diskGuard) reservePath() string { return filepath.Join(g.dir, reserveName) }

// makeReserve creates the reserve file with its blocks allocated (a sparse
// file would free nothing when removed).
func (g *diskGuard) makeReserve() error {
	if g.reserve <= 0 {
		return nil
	}
	p := g.reservePath()
	if fi, err := os.Stat(p); err == nil && fi.Size() == g.reserve {
		return nil
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = unix.Fallocate(int(f.Fd()), 0, 0, g.reserve)
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = writeZeros(f, g.reserve)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
		return err
	}
	return nil
}

func writeZeros(f *os.File, n int64) error {
	buf := make([]byte, 64<<10)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// check passes err through, tripping the guard when it is a lack of room.
// It reports whether it tripped.
func (g *diskGuard) check(err error) bool {
	if !isNoSpace(err) {
		return false
	}
	g.trip(err)
	return true
}

func (g *diskGuard) trip(err error) {
	g.mu.Lock()
	first := !g.full.Load()
	if first {
		g.cause, g.since = err, time.Now()
		g.full.Store(true)
	}
	g.mu.Unlock()
	if !first {
		return
	}
	if rerr := os.Remove(g.reservePath()); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		g.logger.Error("give up the raft dir's reserve", "dir", g.dir, "err", rerr)
	}
	g.logger.Error("raft data dir is full: this manager refuses writes until space is freed there, and keeps serving reads",
		"dir", g.dir, "err", err)
	select {
	case g.trips <- struct{}{}:
	default:
	}
}

// err is the error a refused write returns, nil while there is room.
func (g *diskGuard) err() error {
	if !g.full.Load() {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return fmt.Errorf("%w (%s, since %s: %v): free space on that file system; writes resume by themselves, meanwhile reads are served",
		ErrDiskFull, g.dir, g.since.UTC().Format(time.RFC3339), g.cause)
}

// watch gives the dir its reserve back, and writes their way, once the
// file system has room for twice the reserve: the margin keeps one freed
// megabyte from flipping the guard back and forth.
func (g *diskGuard) watch() {
	defer close(g.done)
	t := time.NewTicker(spaceCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		if !g.full.Load() {
			continue
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(g.dir, &fs); err != nil {
			continue
		}
		if int64(fs.Bavail)*fs.Bsize < 2*g.reserve {
			continue
		}
		if err := g.makeReserve(); err != nil {
			continue
		}
		g.mu.Lock()
		since := g.since
		g.cause = nil
		g.full.Store(false)
		g.mu.Unlock()
		g.logger.Info("raft data dir has room again: writes resume", "dir", g.dir, "full_for", time.Since(since).Round(time.Second))
	}
}

func (g *diskGuard) close() {
	g.closed.Do(func() { close(g.stop); <-g.done })
}

// guardedLogs is raft's log store seen through the guard: a no-space
// error trips it, and while it is tripped commands are refused before
// they reach the disk (all of a batch or none), while raft's own entries
// (no-ops, configuration, barriers) still go through on the reserve.
type guardedLogs struct {
	raft.LogStore
	g *diskGuard
}

func (s guardedLogs) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s guardedLogs) StoreLogs(logs []*raft.Log) error {
	if err := s.g.err(); err != nil {
		for _, l := range logs {
			if l.Type == raft.LogCommand {
				return err
			}
		}
	}
	err := s.LogStore.StoreLogs(logs)
	if s.g.check(err) {
		if ferr := s.g.err(); ferr != nil {
			return ferr
		}
		return fmt.Errorf("%w: %v", ErrDiskFull, err)
	}
	return err
}

func (s guardedLogs) DeleteRange(lo, hi uint64) error {
	err := s.LogStore.DeleteRange(lo, hi)
	s.g.check(err)
	return err
}

// guardedStable retries a write that failed for lack of room once the
// guard has given up the reserve: raft panics on a term or vote it cannot
// persist.
type guardedStable struct {
	raft.StableStore
	g *diskGuard
}

func (s guardedStable) Set(k, v []byte) error {
	err := s.StableStore.Set(k, v)
	if s.g.check(err) {
		err = s.StableStore.Set(k, v)
	}
	return err
}

func (s guardedStable) SetUint64(k []byte, v uint64) error {
	err := s.StableStore.SetUint64(k, v)
	if s.g.check(err) {
		err = s.StableStore.SetUint64(k, v)
	}
	return err
}

// guardedSnapshots refuses to start a snapshot while the dir is full (it
// would eat the reserve) and trips the guard when writing one runs out of
// room; raft then drops the partial snapshot and keeps its log.
type guardedSnapshots struct {
	raft.SnapshotStore
	g *diskGuard
}

func (s guardedSnapshots) Create(version raft.SnapshotVersion, index, term uint64, conf raft.Configuration,
	confIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	if err := s.g.err(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	sink, err := s.SnapshotStore.Create(version, index, term, conf, confIndex, trans)
	if s.g.check(err) {
		return nil, fmt.Errorf("snapshot: %w: %v", ErrDiskFull, err)
	}
	if err != nil {
		return nil, err
	}
	return guardedSink{SnapshotSink: sink, g: s.g}, nil
}

type guardedSink struct {
	raft.SnapshotSink
	g *diskGuard
}

var _ io.Writer = guardedSink{}

func (s guardedSink) Write(p []byte) (int, error) {
	n, err := s.SnapshotSink.Write(p)
	s.g.check(err)
	return n, err
}

func (s guardedSink) Close() error {
	err := s.SnapshotSink.Close()
	s.g.check(err)
	return err
}
