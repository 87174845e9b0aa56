package image_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/shoal-project/shoal/image"
	"github.com/shoal-project/shoal/internal/testimage"
)

const containerdSocket = "/run/containerd/containerd.sock"

// digestReader passes a tarball through and fails at its end when its
// sha256 is not want: the check a worker makes on a tarball from the
// managers.
type digestReader struct {
	r    io.Reader
	h    hash.Hash
	want string
}

func (d *digestReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		if got := "sha256:" + hex.EncodeToString(d.h.Sum(nil)); got != d.want {
			return n, fmt.Errorf("tarball digest %s, want %s", got, d.want)
		}
	}
	return n, err
}

// TestImportVerifiesBeforeNaming imports a tarball whose digest is not
// the one expected, over a name that already refers to an image: the
// import fails, no image is created and the name keeps its image.
func TestImportVerifiesBeforeNaming(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to talk to containerd")
	}
	if _, err := os.Stat(containerdSocket); err != nil {
		t.Skipf("containerd socket %s missing: %v", containerdSocket, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	suffix := make([]byte, 4)
	rand.Read(suffix)
	ns := "shoal-image-test-" + hex.EncodeToString(suffix)
	c, err := client.New(containerdSocket, client.WithDefaultNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nsCtx := namespaces.WithNamespace(ctx, ns)
	t.Cleanup(func() {
		if err := image.PurgeNamespace(context.Background(), containerdSocket, ns); err != nil {
			t.Errorf("purge namespace %s: %v", ns, err)
		}
	})

	tarball := func(ref, data string) ([]byte, string) {
		var buf bytes.Buffer
		if _, err := testimage.WriteOCI(&buf, testimage.Image{Ref: ref, Files: []testimage.File{{Path: "/data", Data: []byte(data)}}}); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(buf.Bytes())
		return buf.Bytes(), "sha256:" + hex.EncodeToString(sum[:])
	}
	names := func() map[string]string {
		imgs, err := c.ImageService().List(nsCtx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, img := range imgs {
			out[img.Name] = img.Target.Digest.String()
		}
		return out
	}

	// Into an empty namespace: nothing is named.
	bad, _ := tarball("shoal.test/verify:1", "tampered")
	_, good := tarball("shoal.test/verify:1", "original")
	if _, err := image.ImportTo(ctx, containerdSocket, ns, &digestReader{r: bytes.NewReader(bad), h: sha256.New(), want: good}); err == nil {
		t.Fatal("import of a tarball with the wrong digest succeeded")
	} else if !errors.Is(err, image.ErrNoneNamed) {
		t.Errorf("import error %v does not say that no image was named", err)
	}
	if got := names(); len(got) != 0 {
		t.Fatalf("a refused import left images named %v", got)
	}

	// Over a name in use: the name keeps its image.
	orig, origDigest := tarball("shoal.test/verify:1", "original")
	if _, err := image.ImportTo(ctx, containerdSocket, ns, &digestReader{r: bytes.NewReader(orig), h: sha256.New(), want: origDigest}); err != nil {
		t.Fatalf("import of the original: %v", err)
	}
	before := names()
	if _, err := image.ImportTo(ctx, containerdSocket, ns, &digestReader{r: bytes.NewReader(bad), h: sha256.New(), want: origDigest}); err == nil {
		t.Fatal("import of a tarball with the wrong digest succeeded")
	}
	if after := names(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("a refused import changed the names: %v, before %v", after, before)
	}
}
