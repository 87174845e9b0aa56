package containerd

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Task log bounds. Docker's json-file driver keeps everything unless told
// otherwise, and that is how a chatty container fills a disk; shoal bounds
// every task's log by default, at the values Docker's documentation
// suggests for it (max-size=10m, max-file=3): 30 MiB a task, enough to
// hold the last minutes of a chatty task for `docker logs`-style
// debugging, while a hundred tasks stay within 3 GiB.
const (
	DefaultLogMaxSize  = 10 << 20
	DefaultLogMaxFiles = 3
)

// logCheckInterval is how often logs are measured. The shim writes a task's
// output straight to its file, so each part of a log can grow past its cap
// by what the task writes in this long; a quarter second keeps that small
// even for a task writing flat out, at the cost of a stat per task.
const logCheckInterval = 250 * time.Millisecond

// logRotator keeps every <task>.log in dir within maxSize, keeping up to
// maxFiles-1 older parts as <task>.log.1 (newest) ... <task>.log.N. The
// shim holds the file open in append mode, so rotation copies the file
// and truncates it in place (logrotate's copytruncate): the shim's next
// write lands at the start of the emptied file. Output written between
// the copy and the truncation is lost; that window is one file copy.
type logRotator struct {
	dir      string
	maxSize  int64
	maxFiles int
	logger   *slog.Logger
}

// sweep rotates every log over its cap.
func (r *logRotator) sweep() {
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		r.logger.Warn("read task log dir", "dir", r.dir, "err", err)
		return
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".log") {
			continue
		}
		fi, err := e.Info()
		if err != nil || fi.Size() <= r.maxSize {
			continue
		}
		path := filepath.Join(r.dir, e.Name())
		if err := r.rotate(path); err != nil {
			r.logger.Warn("rotate task log", "path", path, "err", err)
		}
	}
}

// rotate shifts path's older parts up by one, dropping the oldest, copies
// path to path.1 and empties path.
func (r *logRotator) rotate(path string) error {
	if r.maxFiles > 1 {
		for k := r.maxFiles - 1; k > 1; k-- {
			if err := os.Rename(rotated(path, k-1), rotated(path, k)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		if err := copyFile(path, rotated(path, 1)); err != nil {
			// On a full disk the copy fails: emptying the log is still
			// what keeps the disk from staying full.
			r.logger.Warn("keep a rotated task log", "path", path, "err", err)
			os.Remove(rotated(path, 1))
		}
	}
	if err := os.Truncate(path, 0); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	return nil
}

func rotated(path string, k int) string { return fmt.Sprintf("%s.%d", path, k) }

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// removeLogs removes a task's log and its rotated parts.
func removeLogs(path string) error {
	matches, _ := filepath.Glob(path + ".*")
	for _, p := range append([]string{path}, matches...) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// run sweeps until stop is closed.
func (r *logRotator) run(stop <-chan struct{}) {
	t := time.NewTicker(logCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			r.sweep()
		}
	}
}
