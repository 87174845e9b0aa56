// Package smallfs gives tests a small file system to fill: ext4 on a loop
// device where mkfs.ext4 and loop devices are there, else tmpfs with
// size= (full is full either way). Test support only.
package smallfs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Mount mounts a file system of size bytes under a temporary dir and
// returns the mount point. It is unmounted when the test ends, whatever
// happened. Without root the test is skipped.
func Mount(t testing.TB, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small file system needs root")
	}
	base := t.TempDir()
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	mounted := false
	t.Cleanup(func() {
		if mounted {
			if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", mnt, err)
			}
		}
	})
	if _, err := exec.LookPath("mkfs.ext4"); err == nil {
		img := filepath.Join(base, "fs.img")
		if err := os.WriteFile(img, nil, 0o600); err == nil && os.Truncate(img, size) == nil {
			if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
				t.Logf("mkfs.ext4: %v: %s; using tmpfs", err, out)
			} else if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
				t.Logf("mount %s: %v: %s; using tmpfs", img, err, out)
			} else {
				mounted = true
				return mnt
			}
		}
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	mounted = true
	return mnt
}
