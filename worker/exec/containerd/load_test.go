package containerd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/testimage"
)

// smallImage is an image tarball with one file, and the Image the
// managers would record for it.
func smallImage(t *testing.T, ref, content string) (*api.Image, []byte) {
	t.Helper()
	var buf bytes.Buffer
	if _, err := testimage.WriteOCI(&buf, testimage.Image{Ref: ref, Files: []testimage.File{{Path: "/data", Data: []byte(content)}}}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return &api.Image{Id: "sha256:" + hex.EncodeToString(sum[:]), Names: []string{ref}, Size: int64(buf.Len())}, buf.Bytes()
}

// failAtEnd reads r, then fails where r would end.
type failAtEnd struct{ r io.Reader }

var errBadEnd = errors.New("digest mismatch")

func (f failAtEnd) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if errors.Is(err, io.EOF) {
		return n, errBadEnd
	}
	return n, err
}

func hasImage(t *testing.T, e *Executor, img *api.Image) bool {
	t.Helper()
	ok, err := e.HasImage(context.Background(), img)
	if err != nil {
		t.Fatalf("HasImage: %v", err)
	}
	return ok
}

func TestLoadImage(t *testing.T) {
	needContainerd(t)
	ns := testNamespace(t)
	e := newTestExecutor(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	v1, tar1 := smallImage(t, "shoal.test/load:1", "one")
	if hasImage(t, e, v1) {
		t.Fatal("HasImage before any load")
	}
	names, err := e.LoadImage(ctx, v1, bytes.NewReader(tar1))
	if err != nil {
		t.Fatalf("LoadImage: %v", err)
	}
	if !slices.Equal(names, v1.GetNames()) {
		t.Errorf("LoadImage names = %q, want %q", names, v1.GetNames())
	}
	if !hasImage(t, e, v1) {
		t.Errorf("HasImage after the load = false")
	}
	img, err := e.client.GetImage(e.nsContext(ctx), "shoal.test/load:1")
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := img.IsUnpacked(e.nsContext(ctx), e.snapshotter); err != nil || !ok {
		t.Errorf("loaded image unpacked = %v, %v; want it ready for containers", ok, err)
	}
	// Same name, another tarball: not the image that is there.
	v2, tar2 := smallImage(t, "shoal.test/load:1", "two")
	if hasImage(t, e, v2) {
		t.Errorf("HasImage of another tarball under the same name = true")
	}

	// The second tarball's reader fails at its end (as the digest check
	// of the managers' stream does): its import does not count, and the
	// name still refers to the first tarball's image, untouched.
	if _, err := e.LoadImage(ctx, v2, failAtEnd{bytes.NewReader(tar2)}); !errors.Is(err, errBadEnd) {
		t.Fatalf("LoadImage with a reader failing at its end: %v, want %v", err, errBadEnd)
	}
	if hasImage(t, e, v2) || !hasImage(t, e, v1) {
		t.Errorf("after a refused import: HasImage(v2) = %v, HasImage(v1) = %v; want false, true", hasImage(t, e, v2), hasImage(t, e, v1))
	}
	if after, err := e.client.GetImage(e.nsContext(ctx), "shoal.test/load:1"); err != nil || after.Target().Digest != img.Target().Digest {
		t.Errorf("after a refused import the name refers to another image (%v), want the first image %s", err, img.Target().Digest)
	}
	if _, err := e.LoadImage(ctx, v2, bytes.NewReader(tar2)); err != nil {
		t.Fatalf("LoadImage of v2: %v", err)
	}
	if !hasImage(t, e, v2) || hasImage(t, e, v1) {
		t.Errorf("after loading v2: HasImage(v2) = %v, HasImage(v1) = %v", hasImage(t, e, v2), hasImage(t, e, v1))
	}

	// The managers read other names from the tarball than the import made.
	odd := &api.Image{Id: v1.GetId(), Names: []string{"shoal.test/elsewhere:1"}}
	if _, err := e.LoadImage(ctx, odd, bytes.NewReader(tar1)); err == nil || !strings.Contains(err.Error(), "shoal.test/elsewhere:1") {
		t.Errorf("LoadImage with names the tarball does not hold: %v", err)
	}
	if _, err := e.LoadImage(ctx, v1, strings.NewReader("not a tarball")); err == nil {
		t.Errorf("LoadImage of garbage succeeded")
	}
}
