package tarballs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// chunks returns a next func that yields parts, then err (io.EOF for a
// complete stream).
func chunks(err error, parts ...string) func() ([]byte, error) {
	return func() ([]byte, error) {
		if len(parts) == 0 {
			return nil, err
		}
		p := parts[0]
		parts = parts[1:]
		return []byte(p), nil
	}
}

func digestOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// files lists what is in dir, names only.
func files(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestReceive(t *testing.T) {
	broken := errors.New("stream broke")
	tests := []struct {
		name  string
		next  func() ([]byte, error)
		max   int64
		want  string // content kept; "" with err set
		err   error
		check func(t *testing.T, err error)
	}{
		{name: "chunks", next: chunks(io.EOF, "hello ", "", "world"), max: 100, want: "hello world"},
		{name: "exactly the limit", next: chunks(io.EOF, "12345"), max: 5, want: "12345"},
		{name: "empty", next: chunks(io.EOF), max: 5, want: ""},
		{name: "over the limit", next: chunks(io.EOF, "123", "456"), max: 5, err: ErrTooLarge},
		{name: "stream error", next: chunks(broken, "123"), max: 5, err: broken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "images")
			d, err := Open(root)
			if err != nil {
				t.Fatal(err)
			}
			in, err := d.Receive(tt.next, tt.max)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Receive: %v, want %v", err, tt.err)
				}
				if got := files(t, root); len(got) != 0 {
					t.Errorf("a failed receive left %q", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if in.ID != digestOf(tt.want) || in.Size != int64(len(tt.want)) {
				t.Errorf("received %s (%d bytes), want %s (%d)", in.ID, in.Size, digestOf(tt.want), len(tt.want))
			}
			if d.Has(in.ID) {
				t.Errorf("Has before Keep")
			}
			if err := in.Keep(); err != nil {
				t.Fatal(err)
			}
			if !d.Has(in.ID) {
				t.Errorf("Has after Keep = false")
			}
			f, err := d.OpenTarball(in.ID)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(f)
			f.Close()
			if string(b) != tt.want {
				t.Errorf("kept %q, want %q", b, tt.want)
			}
			if got, want := files(t, root), []string{strings.TrimPrefix(in.ID, "sha256:") + ".tar"}; !slices.Equal(got, want) {
				t.Errorf("directory holds %q, want %q", got, want)
			}
		})
	}
}

func TestDiscardLeavesNothing(t *testing.T) {
	root := t.TempDir()
	d, _ := Open(root)
	in, err := d.Receive(chunks(io.EOF, "abc"), 10)
	if err != nil {
		t.Fatal(err)
	}
	in.Discard()
	if got := files(t, root); len(got) != 0 {
		t.Errorf("Discard left %q", got)
	}
	if d.Has(in.ID) {
		t.Errorf("Has after Discard")
	}
}

func TestOpenRemovesUnfinished(t *testing.T) {
	root := t.TempDir()
	kept := strings.Repeat("ab", 32) + ".tar"
	for _, name := range []string{incomingPrefix + "123.tar", kept, "notes.txt"} {
		if err := os.WriteFile(filepath.Join(root, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := files(t, root), []string{kept, "notes.txt"}; !slices.Equal(got, want) {
		t.Errorf("after Open: %q, want %q", got, want)
	}
	list, err := d.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != "sha256:"+strings.Repeat("ab", 32) {
		t.Errorf("List = %+v, want the one tarball", list)
	}
}

func TestIDsNameOnlyTarballs(t *testing.T) {
	d, _ := Open(t.TempDir())
	good := digestOf("x")
	for _, id := range []string{
		"", "sha256:", strings.TrimPrefix(good, "sha256:"), "sha512:" + strings.Repeat("a", 128),
		"sha256:" + strings.Repeat("A", 64), "sha256:" + strings.Repeat("g", 64),
		"sha256:../../../../etc/passwd", "sha256:" + strings.Repeat("a", 63),
	} {
		if _, err := d.file(id); err == nil {
			t.Errorf("file(%q) accepted", id)
		}
		if _, err := d.OpenTarball(id); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("OpenTarball(%q) = %v, want a refusal", id, err)
		}
		if d.Has(id) {
			t.Errorf("Has(%q)", id)
		}
	}
	if _, err := d.file(good); err != nil {
		t.Errorf("file(%q): %v", good, err)
	}
	if _, err := d.OpenTarball(good); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenTarball of a missing tarball: %v, want fs.ErrNotExist", err)
	}
}

func TestRemove(t *testing.T) {
	d, _ := Open(t.TempDir())
	in, err := d.Receive(chunks(io.EOF, "abc"), 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Keep(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // the second time it is already gone
		if err := d.Remove(in.ID); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if d.Has(in.ID) {
		t.Errorf("Has after Remove")
	}
	if list, _ := d.List(); len(list) != 0 {
		t.Errorf("List after Remove: %+v", list)
	}
}
