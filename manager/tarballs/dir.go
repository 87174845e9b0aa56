package tarballs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	// suffix ends every kept tarball's file name.
	suffix = ".tar"
	// incomingPrefix starts the temporary files tarballs are received
	// into; Open removes those a crash left.
	incomingPrefix = ".incoming-"
	digestPrefix   = "sha256:"
)

// ErrTooLarge is wrapped by Receive when the tarball passes the limit.
var ErrTooLarge = errors.New("image tarball too large")

// Dir is a directory of image tarballs, <dir>/<hex>.tar. It is created on
// first write, so that a manager that never sees an image leaves nothing.
type Dir struct {
	path string
}

// Open returns the tarball directory at path and removes the temporary
// files an earlier run left there. Call it before anything writes to the
// directory.
func Open(path string) (*Dir, error) {
	d := &Dir{path: path}
	entries, err := os.ReadDir(path)
	if errors.Is(err, fs.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read image directory: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), incomingPrefix) {
			if err := os.Remove(filepath.Join(path, e.Name())); err != nil {
				return nil, fmt.Errorf("remove unfinished image upload: %w", err)
			}
		}
	}
	return d, nil
}

// Path is the directory.
func (d *Dir) Path() string { return d.path }

// file returns where the tarball with digest id lives. It refuses
// anything but a sha256 digest, so that an id from the network can never
// name another file.
func (d *Dir) file(id string) (string, error) {
	hexPart, ok := strings.CutPrefix(id, digestPrefix)
	if !ok || len(hexPart) != sha256.Size*2 || strings.ToLower(hexPart) != hexPart {
		return "", fmt.Errorf("image id %q: want sha256:<64 lower-case hex digits>", id)
	}
	if _, err := hex.DecodeString(hexPart); err != nil {
		return "", fmt.Errorf("image id %q: %w", id, err)
	}
	return filepath.Join(d.path, hexPart+suffix), nil
}

// Has reports whether the tarball of id is here.
func (d *Dir) Has(id string) bool {
	p, err := d.file(id)
	if err != nil {
		return false
	}
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// OpenTarball opens the tarball of id for reading; the error wraps
// fs.ErrNotExist when it is not here.
func (d *Dir) OpenTarball(id string) (*os.File, error) {
	p, err := d.file(id)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

// Incoming is a tarball received into a temporary file, not yet kept.
// Exactly one of Keep or Discard must be called.
type Incoming struct {
	// ID is the tarball's digest, "sha256:<hex>".
	ID   string
	Size int64
	dir  *Dir
	tmp  string
}

// Receive writes the chunks next returns, until it returns io.EOF, into
// a temporary file, hashing as it goes. Past max bytes it stops with an
// error wrapping ErrTooLarge. On any error nothing is left on disk.
func (d *Dir) Receive(next func() ([]byte, error), max int64) (_ *Incoming, err error) {
	if err := os.MkdirAll(d.path, 0o700); err != nil {
		return nil, fmt.Errorf("create image directory: %w", err)
	}
	f, err := os.CreateTemp(d.path, incomingPrefix+"*"+suffix)
	if err != nil {
		return nil, fmt.Errorf("create image file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	w := io.MultiWriter(f, h)
	var size int64
	for {
		chunk, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		size += int64(len(chunk))
		if size > max {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, max)
		}
		if _, err := w.Write(chunk); err != nil {
			return nil, fmt.Errorf("write image file: %w", err)
		}
	}
	// Synced before it is kept: the store will say this manager holds
	// it, and that must stay true after a crash.
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("sync image file: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("close image file: %w", err)
	}
	return &Incoming{ID: digestPrefix + hex.EncodeToString(h.Sum(nil)), Size: size, dir: d, tmp: f.Name()}, nil
}

// Open opens the received bytes for reading (to inspect them before
// keeping them).
func (in *Incoming) Open() (*os.File, error) { return os.Open(in.tmp) }

// Keep moves the tarball to its place. A tarball with the same digest
// already there is the same bytes, and is replaced.
func (in *Incoming) Keep() error {
	p, err := in.dir.file(in.ID)
	if err != nil {
		in.Discard()
		return err
	}
	if err := os.Rename(in.tmp, p); err != nil {
		in.Discard()
		return fmt.Errorf("keep image file: %w", err)
	}
	return nil
}

// Discard removes the received bytes.
func (in *Incoming) Discard() { os.Remove(in.tmp) }

// Remove deletes the tarball of id; a missing one is not an error.
func (d *Dir) Remove(id string) error {
	p, err := d.file(id)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove image file: %w", err)
	}
	return nil
}

// Kept is a tarball on disk.
type Kept struct {
	ID string
	// ModTime is when its bytes were last written.
	ModTime time.Time
}

// List returns the tarballs kept here, without the ones being received.
func (d *Dir) List() ([]Kept, error) {
	entries, err := os.ReadDir(d.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read image directory: %w", err)
	}
	var out []Kept
	for _, e := range entries {
		hexPart, ok := strings.CutSuffix(e.Name(), suffix)
		if !ok || strings.HasPrefix(e.Name(), incomingPrefix) || !e.Type().IsRegular() {
			continue
		}
		id := digestPrefix + hexPart
		if _, err := d.file(id); err != nil {
			continue // not ours
		}
		info, err := e.Info()
		if err != nil {
			continue // removed while we listed
		}
		out = append(out, Kept{ID: id, ModTime: info.ModTime()})
	}
	return out, nil
}
