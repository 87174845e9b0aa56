package state

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-project/shoal/internal/smallfs"

	"github.com/hashicorp/raft"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// smallFS is a small file system for the test to fill (smallfs.Mount).
func smallFS(t *testing.T, size int64) string {
	t.Helper()
	return smallfs.Mount(t, size)
}

// fill writes path until the file system has no room left.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", path, err)
			}
			break
		}
	}
	// Whatever is left is smaller than a block of buf; take it too.
	for {
		if _, err := f.Write(buf[:512]); err != nil {
			break
		}
	}
	f.Sync()
}

func bigTask(i int) *api.Task {
	return &api.Task{Id: fmt.Sprintf("t%05d", i), ServiceId: "s1", Slot: uint64(i),
		Status: &api.TaskStatus{Message: strings.Repeat("x", 4000)}}
}

// TestDiskFull fills the file system under a real raft member's data dir
// and checks that writes fail with ErrDiskFull, that the member keeps
// leading and serving what it had (without crashing: hashicorp/raft panics
// when it cannot persist a term), that nothing refused is applied, and
// that writes resume once space is freed, with every acknowledged write
// still there after a restart.
func TestDiskFull(t *testing.T) {
	mnt := smallFS(t, 48<<20)
	dir := filepath.Join(mnt, "raft")
	_, tr := raft.NewInmemTransport(raft.ServerAddress("node1"))
	cfg := Config{Dir: dir, ID: "node1", Transport: tr, ReserveBytes: 2 << 20, SnapshotThreshold: 1 << 20}
	n, err := Open(cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			n.Close()
		}
	}()
	ctx := context.Background()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(wctx); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	i := 0
	propose := func() error {
		i++
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		task := bigTask(i)
		err := n.Propose(pctx, store.Create(task))
		if err == nil {
			acked[task.Id] = true
		}
		return err
	}
	for range 20 {
		if err := propose(); err != nil {
			t.Fatal(err)
		}
	}

	fill(t, filepath.Join(mnt, "filler"))
	var werr error
	for range 5000 {
		if werr = propose(); werr != nil {
			break
		}
	}
	if !errors.Is(werr, ErrDiskFull) {
		t.Fatalf("a write on a full disk failed with %v, want ErrDiskFull", werr)
	}
	// The member may step down on the failed append; it must lead again
	// and then stay leader, refusing writes clearly, serving reads.
	deadline := time.Now().Add(10 * time.Second)
	for !n.IsLeader() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !n.IsLeader() {
		t.Fatal("no leader again after the disk filled")
	}
	term := n.raft.Stats()["term"]
	for range 20 {
		err := propose()
		if !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), "free space") {
			t.Fatalf("write on a full disk: %v, want ErrDiskFull saying to free space", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := n.raft.Stats()["term"]; got != term || !n.IsLeader() {
		t.Fatalf("leadership moved while the disk stayed full: term %s then %s, leader %v", term, got, n.IsLeader())
	}
	checkTasks(t, n, acked)

	if err := os.Remove(filepath.Join(mnt, "filler")); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		err := propose()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes did not resume after space was freed: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for range 20 {
		if err := propose(); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Snapshot(); err != nil {
		t.Fatalf("snapshot after space returned: %v", err)
	}
	closed = true
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	r := open(t, dir, false)
	defer r.Close()
	if err := r.raft.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	checkTasks(t, r, acked)
}

// checkTasks: the store holds exactly the acknowledged tasks.
func checkTasks(t *testing.T, n *Node, acked map[string]bool) {
	t.Helper()
	snap := n.Store().Snapshot()
	got := map[string]bool{}
	for _, task := range snap.Tasks {
		got[task.Id] = true
		if !acked[task.Id] {
			t.Errorf("task %s is in the store but its write was refused", task.Id)
		}
	}
	for id := range acked {
		if !got[id] {
			t.Errorf("task %s was acknowledged but is not in the store", id)
		}
	}
}

// TestDiskFullHandsOverLeadership: in a group of three, the leader's disk
// fills. Leadership moves to a healthy member and stays there, the
// cluster keeps taking writes, the full member refuses its own with
// ErrDiskFull, and once space is freed it catches up.
func TestDiskFullHandsOverLeadership(t *testing.T) {
	mnt := smallFS(t, 48<<20)
	ids := []string{"m1", "m2", "m3"}
	dirs := []string{filepath.Join(mnt, "raft"), t.TempDir(), t.TempDir()}
	trs := make([]*raft.InmemTransport, 3)
	for i, id := range ids {
		_, trs[i] = raft.NewInmemTransport(raft.ServerAddress(id))
	}
	for i := range trs {
		for j := range trs {
			if i != j {
				trs[i].Connect(trs[j].LocalAddr(), trs[j])
			}
		}
	}
	nodes := make([]*Node, 3)
	for i, id := range ids {
		n, err := Open(Config{Dir: dirs[i], ID: id, Transport: trs[i], ReserveBytes: 2 << 20, SnapshotThreshold: 1 << 20}, i == 0)
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = n
		defer n.Close()
	}
	full := nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := full.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 3; i++ {
		if err := full.AddVoter(ids[i], ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	leader := func() *Node {
		for _, n := range nodes {
			if n.IsLeader() {
				return n
			}
		}
		return nil
	}
	seq := 0
	write := func(n *Node) error {
		seq++
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return n.Propose(pctx, store.Create(bigTask(seq)))
	}
	for range 10 {
		if err := write(full); err != nil {
			t.Fatal(err)
		}
	}

	fill(t, filepath.Join(mnt, "filler"))
	var werr error
	for range 5000 {
		if werr = write(full); werr != nil {
			break
		}
	}
	if !errors.Is(werr, ErrDiskFull) {
		t.Fatalf("write on the full leader: %v, want ErrDiskFull", werr)
	}
	deadline := time.Now().Add(15 * time.Second)
	for l := leader(); l == nil || l == full; l = leader() {
		if time.Now().After(deadline) {
			t.Fatal("leadership did not leave the member whose disk is full")
		}
		time.Sleep(50 * time.Millisecond)
	}
	healthy := leader()
	for range 20 {
		if l := leader(); l != healthy {
			t.Fatal("leadership moved again while the disk stayed full")
		}
		if err := write(healthy); err != nil {
			t.Fatalf("write on the healthy leader: %v", err)
		}
		if err := write(full); !errors.Is(err, ErrDiskFull) {
			t.Fatalf("write on the full member: %v, want ErrDiskFull", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if err := os.Remove(filepath.Join(mnt, "filler")); err != nil {
		t.Fatal(err)
	}
	want := healthy.Store().Index()
	deadline = time.Now().Add(20 * time.Second)
	for full.DiskFull() != nil || full.Store().Index() < want {
		if time.Now().After(deadline) {
			t.Fatalf("the member did not catch up once space was freed: index %d, want %d (%v)", full.Store().Index(), want, full.DiskFull())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got, want := len(full.Store().Snapshot().Tasks), len(healthy.Store().Snapshot().Tasks); got != want {
		t.Fatalf("caught-up member holds %d tasks, leader %d", got, want)
	}
}
