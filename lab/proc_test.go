package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestNamesLabDataDir(t *testing.T) {
	tests := []struct {
		args []string
		want bool
	}{
		{[]string{"shoald", "init", "--data-dir", "/var/lib/shoal-lab/manager1"}, true},
		{[]string{"shoald", "run", "--data-dir=/var/lib/shoal-lab/worker3", "--socket", "x"}, true},
		{[]string{"shoald", "run", "--data-dir", "/var/lib/shoal-lab/../shoal-lab/w1"}, true},
		{[]string{"shoald", "run", "--data-dir", "/var/lib/shoal-lab"}, true},
		{[]string{"shoald", "run", "--data-dir", "/var/lib/shoal"}, false},
		{[]string{"shoald", "run", "--data-dir", "/var/lib/shoal-lab-other/x"}, false},
		{[]string{"tail", "-f", "/var/lib/shoal-lab/manager1/shoald.log"}, false},
		{[]string{"shoald", "run", "--data-dir"}, false},
		{[]string{"shoald"}, false},
	}
	for _, tt := range tests {
		if got := namesLabDataDir(tt.args); got != tt.want {
			t.Errorf("namesLabDataDir(%q) = %v, want %v", tt.args, got, tt.want)
		}
	}
}

func TestRedactToken(t *testing.T) {
	in := []string{"join", "--token", "SHOAL-1-abc-def", "10.213.0.2:4242"}
	got := redactToken(in)
	want := []string{"join", "--token", "<redacted>", "10.213.0.2:4242"}
	if !slices.Equal(got, want) {
		t.Errorf("redactToken = %q, want %q", got, want)
	}
	if in[2] != "SHOAL-1-abc-def" {
		t.Errorf("redactToken changed its argument")
	}
}

func TestAlive(t *testing.T) {
	// This test binary is alive but runs on no data dir.
	if zombieOrGone(os.Getpid()) {
		t.Errorf("zombieOrGone(self) = true")
	}
	if alive(os.Getpid(), "/var/lib/shoal-lab/manager1") {
		t.Errorf("alive(self) = true for a data dir it does not name")
	}
	if alive(0, "/x") || alive(-1, "/x") {
		t.Errorf("alive of a non-pid")
	}

	// A child that exited and was not reaped yet is a zombie: gone.
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", "exit 0", "--data-dir", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	// Wait for the exit without reaping, so the zombie is still there.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if !zombieOrGone(pid) {
		t.Errorf("zombieOrGone(exited child) = false")
	}
	if alive(pid, dir) {
		t.Errorf("alive(zombie) = true")
	}
	cmd.Wait()
	if !zombieOrGone(pid) {
		t.Errorf("zombieOrGone(reaped child) = false")
	}
}

func TestAliveMatchesDataDir(t *testing.T) {
	dir := t.TempDir()
	// sh carries the flag in its command line like shoald would.
	cmd := exec.Command("sh", "-c", "sleep 60", "sh", "--data-dir", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// Until the child has exec'd sh, its command line is the test's.
	deadline := time.Now().Add(10 * time.Second)
	for !alive(cmd.Process.Pid, dir) {
		if time.Now().After(deadline) {
			t.Fatalf("alive(pid, its data dir) = false")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if alive(cmd.Process.Pid, dir+"x") {
		t.Errorf("alive(pid, another data dir) = true")
	}
	if err := killAndWait(t.Context(), []int{cmd.Process.Pid}); err != nil {
		t.Fatal(err)
	}
	if alive(cmd.Process.Pid, dir) {
		t.Errorf("alive after kill")
	}
}

func TestProbeShoald(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   shoaldCaps
	}{
		{"today's", `case "$1" in init) echo "  --data-dir string";; *) echo 'unknown command "join"' >&2; exit 1;; esac`, shoaldCaps{}},
		{"with listen", `case "$1" in init) echo "--listen-addr x --advertise-addr y";; *) exit 1;; esac`, shoaldCaps{listen: true}},
		{"with join", `case "$1" in init) echo "--listen-addr x --advertise-addr y";; join) echo "shoald join --token T ADDR";; esac`, shoaldCaps{listen: true, join: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bin := fakeShoald(t, tt.script)
			got, err := probeShoald(t.Context(), bin)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("caps = %+v, want %+v", got, tt.want)
			}
		})
	}
	t.Run("broken binary", func(t *testing.T) {
		bin := fakeShoald(t, `echo "segfault" >&2; exit 2`)
		if _, err := probeShoald(t.Context(), bin); err == nil || !strings.Contains(err.Error(), "segfault") {
			t.Fatalf("err = %v, want the binary's output", err)
		}
	})
}

func fakeShoald(t *testing.T, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shoald")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFindShoald(t *testing.T) {
	bin := fakeShoald(t, "exit 0")
	got, err := FindShoald(bin)
	if err != nil || got != bin {
		t.Errorf("FindShoald(%s) = %q, %v", bin, got, err)
	}
	if _, err := FindShoald(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Errorf("FindShoald(missing) succeeded")
	}
	t.Setenv("PATH", filepath.Dir(bin))
	// Nothing named shoald sits next to the test binary, so $PATH decides.
	if got, err := FindShoald(""); err != nil || got != bin {
		t.Errorf("FindShoald from $PATH = %q, %v; want %s", got, err, bin)
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := FindShoald(""); err == nil || !strings.Contains(err.Error(), "--shoald") {
		t.Errorf("FindShoald without any = %v, want advice", err)
	}
}
