package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/shoal-project/shoal/internal/smallfs"

	tc "github.com/shoal-project/shoal/internal/testcluster"
)

// smallFS is a small file system for the test to fill (smallfs.Mount).
func smallFS(t *testing.T, size int64) string {
	t.Helper()
	tc.Skip(t)
	return smallfs.Mount(t, size)
}

// dirSize is the bytes in files under dir.
func dirSize(dir string) int64 {
	var total int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
		return nil
	})
	return total
}

// TestDiskFullAndCorruption runs a node whose data dir is a 96 MiB file
// system. A task writing 2 MiB of log a second would fill it in under a
// minute; its log stays within its cap. Then the file system is filled:
// writes fail with a clear error, reads and leadership stay, writes come
// back once space is freed. Last, a byte of a command in raft.db is
// flipped: shoald refuses to start, saying what is damaged and how to
// recover, rather than serve it.
func TestDiskFullAndCorruption(t *testing.T) {
	mnt := smallFS(t, 96<<20)
	data := filepath.Join(mnt, "data")
	n := tc.NewSingle(t, tc.WithDataDir(data), tc.WithArgs("--task-log-max-size", "1M", "--task-log-max-files", "2"))

	n.Ctl("service", "create", "--name", "chatty", "--env", "ECHO_LOG_KIB_S=2048", tc.Image)
	logs := filepath.Join(data, "logs")
	var peak int64
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		peak = max(peak, dirSize(logs))
	}
	// 2 files of 1 MiB, each over by at most what the task writes in two
	// checks (2 MiB/s × 0.5 s); the task wrote 40 MiB meanwhile.
	if bound := int64(2 * (1<<20 + 1<<20)); peak > bound {
		t.Errorf("task logs peaked at %d bytes, want at most %d", peak, bound)
	}
	if peak < 1<<20 {
		t.Errorf("task logs peaked at %d bytes: the chatty task did not write", peak)
	}
	n.Ctl("service", "rm", "chatty")
	// Removing the task removes its logs: wait for that, so that the
	// space they held is not freed while the disk is meant to be full.
	tc.Eventually(t, 30*time.Second, "the chatty task removed", func() (bool, string) {
		ctrs := n.Containers()
		return len(ctrs) == 0, fmt.Sprint(ctrs)
	})

	// Fill the file system directly, as anything else on the host might.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			break
		}
	}
	for {
		if _, err := f.Write(buf[:4096]); err != nil {
			break
		}
	}
	f.Close()

	// bbolt reuses the pages it freed before it needs new ones: big
	// writes use those up quickly, then one finds no room.
	big := "BIG=" + strings.Repeat("x", 64<<10)
	var out string
	tc.Eventually(t, 60*time.Second, "a write refused for lack of room", func() (bool, string) {
		out, err = n.Try("service", "create", "--detach", "--name", fmt.Sprintf("w%d", time.Now().UnixNano()%1e6), "--replicas", "0", "--env", big, tc.Image)
		return err != nil && strings.Contains(out, "raft data dir is full"), tail(out, 3)
	})
	if !strings.Contains(out, "free space") {
		t.Errorf("the refusal does not say what to do:\n%s", out)
	}
	for range 10 {
		if ls, err := n.Try("service", "ls"); err != nil {
			t.Fatalf("read while the disk is full: %v\n%s", err, ls)
		}
		if nodes, err := n.Try("node", "ls"); err != nil || !strings.Contains(nodes, "Leader") {
			t.Fatalf("node ls while the disk is full (%v):\n%s", err, nodes)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if pid := n.PID(); pid == 0 || syscall.Kill(pid, 0) != nil {
		t.Fatalf("shoald exited on a full disk:\n%s", n.Log())
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	tc.Eventually(t, 30*time.Second, "writes again once space is freed", func() (bool, string) {
		out, err := n.Try("service", "create", "--detach", "--name", "victimservice", "--replicas", "0", tc.Image)
		return err == nil, out
	})

	n.Stop()
	db := filepath.Join(data, "raft", "raft.db")
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	// Commands are sealed at rest: change a byte of the last command's
	// bytes as stored (all copies of them, as a bad sector under the live
	// page would look).
	stored := lastCommand(t, db)
	if !bytes.Contains(b, stored) {
		t.Fatal("the last command is not in raft.db")
	}
	flipped := bytes.Clone(stored)
	flipped[len(flipped)/2] ^= 0x01
	b = bytes.ReplaceAll(b, stored, flipped)
	if err := os.WriteFile(db, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = n.Shoald("run")
	if err == nil {
		t.Fatalf("shoald ran on a damaged raft.db:\n%s", out)
	}
	for _, want := range []string{"damaged", "raft.db", "docs/recovery.md"} {
		if !strings.Contains(out, want) {
			t.Errorf("shoald's refusal does not mention %q:\n%s", want, out)
		}
	}
}

// lastCommand is the data of the last command in the raft log at path,
// as it is stored.
func lastCommand(t *testing.T, path string) []byte {
	t.Helper()
	logs, err := raftboltdb.New(raftboltdb.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	first, err := logs.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, err := logs.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	for i := last; i >= first && i > 0; i-- {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			t.Fatal(err)
		}
		if l.Type == raft.LogCommand && len(l.Data) >= 32 {
			return l.Data
		}
	}
	t.Fatal("no command in the raft log")
	return nil
}
