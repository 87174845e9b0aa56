package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procInfo is what the lab reads about a process from /proc.
type procInfo struct {
	pid  int
	args []string
}

// listProcs reads every process's command line. Processes that end while
// being read are skipped.
func listProcs() ([]procInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("scan /proc: %w", err)
	}
	var out []procInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		out = append(out, procInfo{pid: pid, args: strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")})
	}
	return out, nil
}

// dataDirArg returns the value of a --data-dir flag in args.
func dataDirArg(args []string) (string, bool) {
	for i, a := range args {
		if a == "--data-dir" && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, "--data-dir="); ok {
			return v, true
		}
	}
	return "", false
}

// namesLabDataDir says whether a command line runs on a lab data dir: that
// is how Down recognises a lab's shoald without the state file.
func namesLabDataDir(args []string) bool {
	dir, ok := dataDirArg(args)
	if !ok {
		return false
	}
	dir = filepath.Clean(dir)
	return dir == DataRoot || strings.HasPrefix(dir, DataRoot+"/")
}

// alive says whether pid is a live (not zombie) process whose command
// line names dataDir, so a recycled pid is not mistaken for shoald.
func alive(pid int, dataDir string) bool {
	if pid <= 0 {
		return false
	}
	if zombieOrGone(pid) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	dir, ok := dataDirArg(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"))
	return ok && filepath.Clean(dir) == filepath.Clean(dataDir)
}

// zombieOrGone says whether pid no longer runs. A zombie counts as gone:
// its parent (maybe not us) has yet to reap it, but it holds nothing.
func zombieOrGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses and may
	// itself contain ") ".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return true
	}
	return b[i+2] == 'Z' || b[i+2] == 'X'
}

// killAndWait sends SIGKILL to pids and waits until they are gone.
func killAndWait(ctx context.Context, pids []int) error {
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill pid %d: %w", pid, err)
		}
	}
	return waitGone(ctx, pids, killWait)
}

// waitGone waits until every pid is gone (or a zombie).
func waitGone(ctx context.Context, pids []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var left []int
		for _, pid := range pids {
			if !zombieOrGone(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still run %v after SIGKILL", left, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// shoaldCaps is what a shoald binary supports, read from its help: the
// lab works with the daemon of the same checkout while flags are added.
type shoaldCaps struct {
	listen bool // --listen-addr and --advertise-addr
	join   bool // `shoald join`
}

func probeShoald(ctx context.Context, bin string) (shoaldCaps, error) {
	out, err := exec.CommandContext(ctx, bin, "init", "--help").CombinedOutput()
	if err != nil {
		return shoaldCaps{}, fmt.Errorf("run %s init --help: %w\n%s", bin, err, out)
	}
	caps := shoaldCaps{listen: bytes.Contains(out, []byte("--listen-addr")) && bytes.Contains(out, []byte("--advertise-addr"))}
	out, err = exec.CommandContext(ctx, bin, "join", "--help").CombinedOutput()
	caps.join = err == nil && bytes.Contains(out, []byte("join"))
	return caps, nil
}

// FindShoald returns the shoald binary to run: flag when set, else the
// shoald next to the running executable (as `go build -o bin/ ./cmd/...`
// places them), else the one on $PATH.
func FindShoald(flag string) (string, error) {
	if flag != "" {
		p, err := exec.LookPath(flag)
		if err != nil {
			return "", fmt.Errorf("shoald binary %s: %w", flag, err)
		}
		return filepath.Abs(p)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "shoald")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath("shoald")
	if err != nil {
		return "", errors.New("cannot find shoald next to this executable or on $PATH: build it (`go build -o bin/ ./cmd/...`) or pass --shoald PATH")
	}
	return filepath.Abs(p)
}
