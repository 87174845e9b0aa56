package daemon

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestControlSocketNeverOpen: the API socket appears at its path already
// owner-only. Watching its directory, the socket must arrive by a rename
// (made with its mode elsewhere), never be created there: a socket bound
// at its path and chmod-ed after could be connected to in between, and
// such a connection outlives the chmod.
func TestControlSocketNeverOpen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "shoald.sock")
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Skipf("inotify: %v", err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}

	l, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	created, moved := false, false
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.PathMax))
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("read inotify events: %v", err)
	}
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)], "\x00"))
		if name == filepath.Base(path) {
			created = created || ev.Mask&unix.IN_CREATE != 0
			moved = moved || ev.Mask&unix.IN_MOVED_TO != 0
		}
		off += unix.SizeofInotifyEvent + int(ev.Len)
	}
	if created || !moved {
		t.Errorf("the socket was created at its path (%v) rather than moved there with its mode (%v)", created, moved)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	// It serves at its path, and leaves nothing else in the directory.
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the socket: %v", err)
	}
	c.Close()
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("socket directory holds %d entries, want the socket alone", len(entries))
	}
}
