package ctl

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// tarball is n bytes in which every position differs from its neighbours
// and from the same position in other chunks, so reordered, repeated or
// dropped chunks change the content.
func tarball(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/loadChunkSize*13 + i/251)
	}
	return b
}

func writeTarball(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "web.tar")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestImageLoadStreamsInOrder(t *testing.T) {
	const mib = loadChunkSize
	tests := []struct {
		name       string
		size       int
		wantChunks []int
	}{
		{"small", 10, []int{10}},
		{"exact chunks", 2 * mib, []int{mib, mib}},
		{"partial last chunk", 2*mib + mib/2, []int{mib, mib, mib / 2}},
	}
	for _, tt := range tests {
		data := tarball(tt.size)
		path := writeTarball(t, data)
		sum := sha256.Sum256(data)
		wantOut := "Loaded image: docker.io/library/web:1.0\nLoaded image: docker.io/library/web:latest\nDigest: sha256:" + hex.EncodeToString(sum[:]) + "\n"
		for _, src := range []struct {
			how   string
			args  []string
			stdin io.Reader
		}{
			{"file", []string{path}, strings.NewReader("")},
			{"input flag", []string{"-i", path}, strings.NewReader("")},
			{"stdin", []string{"-"}, bytes.NewReader(data)},
			{"stdin by input flag", []string{"--input", "-"}, bytes.NewReader(data)},
		} {
			t.Run(tt.name+"/"+src.how, func(t *testing.T) {
				f := newFixture()
				out, _, err := runIO(t, testEnv(f), src.stdin, append([]string{"image", "load"}, src.args...)...)
				if err != nil {
					t.Fatal(err)
				}
				if len(f.loads) != 1 {
					t.Fatalf("LoadImage called %d times", len(f.loads))
				}
				l := f.loads[0]
				if !bytes.Equal(l.data, data) {
					t.Errorf("server received %d bytes that differ from the %d of the file", len(l.data), len(data))
				}
				if !slices.Equal(l.chunks, tt.wantChunks) {
					t.Errorf("chunks = %v, want %v", l.chunks, tt.wantChunks)
				}
				if !l.closed {
					t.Error("stream not half-closed: the server never learns the tarball is complete")
				}
				if out != wantOut {
					t.Errorf("output = %q, want %q", out, wantOut)
				}
			})
		}
	}
}

// failingReader gives data, then fails.
type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestImageLoadReadErrorAbortsStream(t *testing.T) {
	f := newFixture()
	stdin := &failingReader{data: tarball(loadChunkSize + 100), err: errors.New("input/output error")}
	_, _, err := runIO(t, testEnv(f), stdin, "image", "load", "-")
	if got, want := ErrorMessage(err), "read image tarball standard input: input/output error"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	if len(f.loads) != 1 {
		t.Fatalf("LoadImage called %d times", len(f.loads))
	}
	l := f.loads[0]
	if l.closed {
		t.Error("stream half-closed after a read error: the server would take a truncated tarball as complete")
	}
	if l.ctx.Err() == nil {
		t.Error("stream context not cancelled after a read error")
	}
	if !slices.Equal(l.chunks, []int{loadChunkSize}) {
		t.Errorf("chunks = %v, want only the complete first one", l.chunks)
	}
}

func TestImageLoadServerRefuses(t *testing.T) {
	f := newFixture()
	f.loadErr = status.Error(codes.InvalidArgument, "web.tar is not an image tarball: neither index.json nor manifest.json in it")
	f.loadErrAfter = 1
	out, err := runCLI(t, f, "image", "load", writeTarball(t, tarball(3*loadChunkSize)))
	if got := ErrorMessage(err); got != "web.tar is not an image tarball: neither index.json nor manifest.json in it" {
		t.Errorf("error = %q, want the server's status", got)
	}
	if out != "" {
		t.Errorf("printed %q after a refused load", out)
	}
	if n := len(f.loads[0].chunks); n != 1 {
		t.Errorf("sent %d chunks; want sending to stop when the server ends the stream", n)
	}
}

func TestHumanSize(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0B"},
		{812, "812B"},
		{999, "999B"},
		{1000, "1kB"},
		{1500, "1.5kB"},
		{999_499, "999kB"},
		{999_500, "1MB"},
		{48_213_504, "48.2MB"},
		{192_838_656, "193MB"},
		{5_000_000_000, "5GB"},
	}
	for _, tt := range tests {
		if got := humanSize(tt.n); got != tt.want {
			t.Errorf("humanSize(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
