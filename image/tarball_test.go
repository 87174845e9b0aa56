package image_test

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-project/shoal/image"
	"github.com/shoal-project/shoal/internal/testimage"
)

// entry is one file of a hand-made tarball; link makes it a symlink.
type entry struct {
	name string
	data string
	link string
}

func tarball(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.data))}
		if e.link != "" {
			hdr = &tar.Header{Name: e.name, Mode: 0o777, Typeflag: tar.TypeSymlink, Linkname: e.link}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func jsonOf(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeOCI(t testing.TB, ref string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := testimage.WriteOCI(&buf, testimage.Image{Ref: ref, Files: []testimage.File{{Path: "/hello", Data: []byte("hi")}}}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

const layout = `{"imageLayoutVersion":"1.0.0"}`

// manifestBlob is a blob the hand-made indexes point at; Inspect checks
// only that it is there.
var manifestBlob = digest.FromString("manifest")

func ociIndex(t testing.TB, annotations ...map[string]string) []entry {
	idx := ocispec.Index{}
	for _, a := range annotations {
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: manifestBlob, Size: 8, Annotations: a})
	}
	return []entry{
		{name: "oci-layout", data: layout},
		{name: "index.json", data: jsonOf(t, idx)},
		{name: "blobs/sha256/" + manifestBlob.Encoded(), data: "manifest"},
	}
}

func dockerArchive(t testing.TB, tags []string, withLayer bool) []byte {
	entries := []entry{
		{name: "manifest.json", data: jsonOf(t, []map[string]any{{"Config": "cfg.json", "RepoTags": tags, "Layers": []string{"abc/layer.tar", "def/layer.tar"}}})},
		{name: "cfg.json", data: "{}"},
		{name: "def/layer.tar", link: "../abc/layer.tar"},
	}
	if withLayer {
		entries = append(entries, entry{name: "abc/layer.tar", data: "layer"})
	}
	return tarball(t, entries...)
}

func TestInspect(t *testing.T) {
	random := make([]byte, 4096)
	rand.Read(random)
	echo := writeOCI(t, "shoal.test/echo:1")
	tests := []struct {
		name    string
		tarball []byte
		want    []string
		err     error
	}{
		{name: "testimage OCI layout", tarball: echo, want: []string{"shoal.test/echo:1"}},
		{name: "short name normalised by the writer", tarball: writeOCI(t, "web"), want: []string{"docker.io/library/web:latest"}},
		{name: "containerd annotation wins", tarball: tarball(t, ociIndex(t, map[string]string{image.AnnotationImageName: "example.com/a:1", ocispec.AnnotationRefName: "example.com/b:2"})...),
			want: []string{"example.com/a:1"}},
		{name: "full ref.name", tarball: tarball(t, ociIndex(t, map[string]string{ocispec.AnnotationRefName: "web:2"})...), want: []string{"docker.io/library/web:2"}},
		{name: "several manifests, repeats once", tarball: tarball(t, ociIndex(t,
			map[string]string{image.AnnotationImageName: "example.com/a:1"},
			map[string]string{image.AnnotationImageName: "example.com/b:1"},
			map[string]string{image.AnnotationImageName: "example.com/a:1"},
			nil)...), want: []string{"example.com/a:1", "example.com/b:1"}},
		{name: "bare tag ref.name names nothing", tarball: tarball(t, ociIndex(t, map[string]string{ocispec.AnnotationRefName: "latest"})...), err: image.ErrNoNames},
		{name: "no annotations", tarball: tarball(t, ociIndex(t, nil)...), err: image.ErrNoNames},
		{name: "docker save", tarball: dockerArchive(t, []string{"web:1.0", "docker.io/library/web:1.0", "example.com/x/web"}, true),
			want: []string{"docker.io/library/web:1.0", "example.com/x/web:latest"}},
		{name: "docker save without tags", tarball: dockerArchive(t, nil, true), err: image.ErrNoNames},
		{name: "docker save missing a layer", tarball: dockerArchive(t, []string{"web:1.0"}, false), err: image.ErrNotImage},
		{name: "docker save with a bad tag", tarball: dockerArchive(t, []string{"Web:UPPER:case"}, true), err: image.ErrNotImage},
		{name: "index.json without oci-layout", tarball: tarball(t, ociIndex(t, map[string]string{image.AnnotationImageName: "a:1"})[1:]...), err: image.ErrNotImage},
		{name: "oci-layout without index.json", tarball: tarball(t, entry{name: "oci-layout", data: layout}), err: image.ErrNotImage},
		{name: "unsupported layout version", tarball: tarball(t, append([]entry{{name: "oci-layout", data: `{"imageLayoutVersion":"2.0.0"}`}}, ociIndex(t, map[string]string{image.AnnotationImageName: "a:1"})[1:]...)...), err: image.ErrNotImage},
		{name: "index names a missing manifest", tarball: tarball(t, ociIndex(t, map[string]string{image.AnnotationImageName: "a:1"})[:2]...), err: image.ErrNotImage},
		{name: "index.json is not JSON", tarball: tarball(t, entry{name: "oci-layout", data: layout}, entry{name: "index.json", data: "{"}), err: image.ErrNotImage},
		{name: "a tarball of something else", tarball: tarball(t, entry{name: "README", data: "hello"}), err: image.ErrNotImage},
		{name: "empty tarball", tarball: tarball(t), err: image.ErrNotImage},
		{name: "no bytes", tarball: nil, err: image.ErrNotImage},
		{name: "random bytes", tarball: random, err: image.ErrNotImage},
		{name: "truncated", tarball: echo[:len(echo)/2], err: image.ErrNotImage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := image.Inspect(bytes.NewReader(tt.tarball))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Inspect = %q, %v; want an error wrapping %q", got, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("names = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRefName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"latest", ""},
		{"1.0", ""},
		{"web:1.0", "docker.io/library/web:1.0"},
		{"example.com/web", "example.com/web:latest"},
		{"localhost:5000/web:2", "localhost:5000/web:2"},
		{"Not A Ref:/", ""},
	}
	for _, tt := range tests {
		if got := image.RefName(tt.in); got != tt.want {
			t.Errorf("RefName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestValidDigest(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{digest.FromString("x").String(), true},
		{"sha256:" + digest.FromString("x").Encoded()[:10], false},
		{"sha512:" + digest.SHA512.FromString("x").Encoded(), false},
		{digest.FromString("x").Encoded(), false},
		{"sha256:../../etc/passwd", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := image.ValidDigest(tt.in); got != tt.want {
			t.Errorf("ValidDigest(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// FuzzInspect feeds arbitrary bytes: Inspect must not panic, and whatever
// it accepts must name at least one image.
func FuzzInspect(f *testing.F) {
	f.Add(writeOCI(f, "shoal.test/echo:1"))
	f.Add(dockerArchive(f, []string{"web:1.0"}, true))
	f.Add(tarball(f, ociIndex(f, map[string]string{ocispec.AnnotationRefName: "latest"})...))
	f.Add([]byte("not a tarball"))
	f.Fuzz(func(t *testing.T, b []byte) {
		names, err := image.Inspect(bytes.NewReader(b))
		if err == nil && len(names) == 0 {
			t.Fatalf("accepted a tarball without names")
		}
		if err != nil && !errors.Is(err, image.ErrNotImage) && !errors.Is(err, image.ErrNoNames) {
			t.Fatalf("error %v wraps neither ErrNotImage nor ErrNoNames", err)
		}
	})
}
