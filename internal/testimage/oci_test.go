package testimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-project/shoal/image"
)

// readTar returns the regular files of a tarball by name, and the names of
// all entries in order.
func readTar(t *testing.T, b []byte) (map[string][]byte, []*tar.Header) {
	t.Helper()
	files := map[string][]byte{}
	var hdrs []*tar.Header
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, hdrs
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		hdrs = append(hdrs, hdr)
		if hdr.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("read tar entry %s: %v", hdr.Name, err)
			}
			files[hdr.Name] = data
		}
	}
}

// blob returns the blob desc points at, checking its digest and size.
func blob(t *testing.T, files map[string][]byte, desc ocispec.Descriptor) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+desc.Digest.Encoded()]
	if !ok {
		t.Fatalf("blob %s missing", desc.Digest)
	}
	if got := digest.FromBytes(b); got != desc.Digest {
		t.Fatalf("blob %s has digest %s", desc.Digest, got)
	}
	if int64(len(b)) != desc.Size {
		t.Fatalf("blob %s is %d bytes, descriptor says %d", desc.Digest, len(b), desc.Size)
	}
	return b
}

func decode(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %T: %v", v, err)
	}
}

func testImage() Image {
	return Image{
		Ref: "shoal.test/echo:v1",
		Files: []File{
			{Path: "/echo", Data: []byte("#!binary"), Mode: 0o755},
			{Path: "etc/config/app.conf", Data: []byte("a=1\n")},
			{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
			{Path: "/bin/sh", Data: []byte("/echo"), Mode: fs.ModeSymlink | 0o777},
		},
		Config: ocispec.ImageConfig{
			Entrypoint:   []string{"/echo"},
			Cmd:          []string{"--http-port", "8080"},
			Env:          []string{"A=1"},
			WorkingDir:   "/",
			ExposedPorts: map[string]struct{}{"8080/tcp": {}},
		},
	}
}

func TestWriteOCI(t *testing.T) {
	var out bytes.Buffer
	mdesc, err := WriteOCI(&out, testImage())
	if err != nil {
		t.Fatal(err)
	}
	files, hdrs := readTar(t, out.Bytes())

	var layout ocispec.ImageLayout
	decode(t, files["oci-layout"], &layout)
	if layout.Version != ocispec.ImageLayoutVersion {
		t.Errorf("oci-layout version %q", layout.Version)
	}

	var index ocispec.Index
	decode(t, files["index.json"], &index)
	if index.SchemaVersion != 2 || len(index.Manifests) != 1 {
		t.Fatalf("index: %+v", index)
	}
	got := index.Manifests[0]
	if got.Digest != mdesc.Digest || got.MediaType != ocispec.MediaTypeImageManifest {
		t.Errorf("index manifest %+v, WriteOCI returned %+v", got, mdesc)
	}
	if name := got.Annotations[AnnotationImageName]; name != "shoal.test/echo:v1" {
		t.Errorf("%s = %q", AnnotationImageName, name)
	}
	if tag := got.Annotations[ocispec.AnnotationRefName]; tag != "v1" {
		t.Errorf("%s = %q, want the tag", ocispec.AnnotationRefName, tag)
	}
	if got.Platform == nil || got.Platform.OS != "linux" || got.Platform.Architecture != runtime.GOARCH {
		t.Errorf("platform %+v", got.Platform)
	}

	var manifest ocispec.Manifest
	decode(t, blob(t, files, got), &manifest)
	if manifest.Config.MediaType != ocispec.MediaTypeImageConfig || len(manifest.Layers) != 1 {
		t.Fatalf("manifest %+v", manifest)
	}
	var config ocispec.Image
	decode(t, blob(t, files, manifest.Config), &config)
	layer := blob(t, files, manifest.Layers[0])
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != digest.FromBytes(layer) {
		t.Errorf("diff IDs %v, want [%s] (the uncompressed layer)", config.RootFS.DiffIDs, digest.FromBytes(layer))
	}
	if !slices.Equal(config.Config.Entrypoint, []string{"/echo"}) || !slices.Equal(config.Config.Cmd, []string{"--http-port", "8080"}) ||
		config.Config.WorkingDir != "/" || !slices.Equal(config.Config.Env, []string{"A=1"}) {
		t.Errorf("image config %+v", config.Config)
	}
	if _, ok := config.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("exposed ports %v", config.Config.ExposedPorts)
	}
	if config.OS != "linux" || config.Architecture != runtime.GOARCH {
		t.Errorf("config platform %s/%s", config.OS, config.Architecture)
	}

	// Every blob present is referenced: nothing stray for containerd to keep.
	for name := range files {
		if enc, ok := strings.CutPrefix(name, "blobs/sha256/"); ok {
			d := digest.NewDigestFromEncoded(digest.SHA256, enc)
			if d != got.Digest && d != manifest.Config.Digest && d != manifest.Layers[0].Digest {
				t.Errorf("unreferenced blob %s", name)
			}
		}
	}
	for _, h := range hdrs {
		if !h.ModTime.Equal(epoch) {
			t.Errorf("outer entry %s has mtime %v", h.Name, h.ModTime)
		}
	}

	// The layer: parents added, sorted, modes kept, root-owned, fixed times.
	layerFiles, layerHdrs := readTar(t, layer)
	type entry struct {
		name     string
		typ      byte
		mode     int64
		linkname string
	}
	var entries []entry
	for _, h := range layerHdrs {
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(epoch) {
			t.Errorf("layer entry %s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		entries = append(entries, entry{h.Name, h.Typeflag, h.Mode, h.Linkname})
	}
	want := []entry{
		{"bin/", tar.TypeDir, 0o755, ""},
		{"bin/sh", tar.TypeSymlink, 0o777, "/echo"},
		{"echo", tar.TypeReg, 0o755, ""},
		{"etc/", tar.TypeDir, 0o755, ""},
		{"etc/config/", tar.TypeDir, 0o755, ""},
		{"etc/config/app.conf", tar.TypeReg, 0o644, ""},
		{"tmp/", tar.TypeDir, 0o1777, ""},
	}
	if !slices.Equal(entries, want) {
		t.Errorf("layer entries\n got %v\nwant %v", entries, want)
	}
	if string(layerFiles["echo"]) != "#!binary" || string(layerFiles["etc/config/app.conf"]) != "a=1\n" {
		t.Errorf("layer file contents %q", layerFiles)
	}
}

func TestWriteOCIDeterministic(t *testing.T) {
	write := func(img Image) ([]byte, ocispec.Descriptor) {
		t.Helper()
		var out bytes.Buffer
		desc, err := WriteOCI(&out, img)
		if err != nil {
			t.Fatal(err)
		}
		return out.Bytes(), desc
	}
	first, firstDesc := write(testImage())

	shuffled := testImage()
	slices.Reverse(shuffled.Files)
	second, secondDesc := write(shuffled)
	if !bytes.Equal(first, second) || firstDesc.Digest != secondDesc.Digest {
		t.Errorf("same files in another order gave different output (%s vs %s)", firstDesc.Digest, secondDesc.Digest)
	}

	changed := testImage()
	changed.Files[0].Data = []byte("#!other")
	if _, desc := write(changed); desc.Digest == firstDesc.Digest {
		t.Errorf("different content gave the same manifest digest %s", desc.Digest)
	}
}

func TestWriteOCIRef(t *testing.T) {
	tests := []struct {
		ref, wantName, wantTag string
	}{
		{"shoal.test/echo:latest", "shoal.test/echo:latest", "latest"},
		{"shoal.test/echo", "shoal.test/echo:latest", "latest"},
		{"echo", "docker.io/library/echo:latest", "latest"},
		{"localhost:5000/team/web:1.2", "localhost:5000/team/web:1.2", "1.2"},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			img := testImage()
			img.Ref = tt.ref
			desc, err := WriteOCI(io.Discard, img)
			if err != nil {
				t.Fatal(err)
			}
			if got := desc.Annotations[AnnotationImageName]; got != tt.wantName {
				t.Errorf("image name %q, want %q", got, tt.wantName)
			}
			if got := desc.Annotations[ocispec.AnnotationRefName]; got != tt.wantTag {
				t.Errorf("ref name %q, want %q", got, tt.wantTag)
			}
		})
	}
}

func TestWriteOCIRejects(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Image)
	}{
		{"empty ref", func(img *Image) { img.Ref = "" }},
		{"bad ref", func(img *Image) { img.Ref = "Shoal/UPPER" }},
		{"digest ref", func(img *Image) {
			img.Ref = "shoal.test/echo@sha256:" + strings.Repeat("a", 64)
		}},
		{"escaping path", func(img *Image) { img.Files = append(img.Files, File{Path: "../etc/passwd"}) }},
		{"dot path", func(img *Image) { img.Files = append(img.Files, File{Path: "/a/./b"}) }},
		{"root path", func(img *Image) { img.Files = append(img.Files, File{Path: "/"}) }},
		{"duplicate", func(img *Image) { img.Files = append(img.Files, File{Path: "echo"}) }},
		{"file under a file", func(img *Image) { img.Files = append(img.Files, File{Path: "/echo/x"}) }},
		{"device", func(img *Image) { img.Files = append(img.Files, File{Path: "/dev/null", Mode: fs.ModeDevice | 0o666}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := testImage()
			tt.modify(&img)
			var out bytes.Buffer
			if _, err := WriteOCI(&out, img); err == nil {
				t.Errorf("WriteOCI accepted it")
			}
			if out.Len() != 0 {
				t.Errorf("WriteOCI wrote %d bytes before failing", out.Len())
			}
		})
	}
}

func BenchmarkWriteOCI(b *testing.B) {
	img := testImage()
	img.Files[0].Data = bytes.Repeat([]byte{0x7f}, 8<<20) // about the echo binary's size
	for b.Loop() {
		if _, err := WriteOCI(io.Discard, img); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWriteOCIHealthcheck writes a HEALTHCHECK where Docker keeps it,
// config.Healthcheck with durations in nanoseconds, and nothing without.
func TestWriteOCIHealthcheck(t *testing.T) {
	configOf := func(img Image) map[string]json.RawMessage {
		t.Helper()
		var out bytes.Buffer
		if _, err := WriteOCI(&out, img); err != nil {
			t.Fatal(err)
		}
		files, _ := readTar(t, out.Bytes())
		var index ocispec.Index
		decode(t, files["index.json"], &index)
		var manifest ocispec.Manifest
		decode(t, blob(t, files, index.Manifests[0]), &manifest)
		var config struct {
			Config map[string]json.RawMessage `json:"config"`
		}
		decode(t, blob(t, files, manifest.Config), &config)
		return config.Config
	}
	img := testImage()
	if hc, ok := configOf(img)["Healthcheck"]; ok {
		t.Errorf("image without a healthcheck has one in its config: %s", hc)
	}
	img.Healthcheck = &image.Healthcheck{Test: []string{"CMD", "/echo", "health"}, Interval: 2 * time.Second, Retries: 4}
	cfg := configOf(img)
	want := `{"Test":["CMD","/echo","health"],"Interval":2000000000,"Retries":4}`
	if got := string(cfg["Healthcheck"]); got != want {
		t.Errorf("config.Healthcheck = %s, want %s", got, want)
	}
	if got := string(cfg["Entrypoint"]); got != `["/echo"]` {
		t.Errorf("config.Entrypoint = %s: the OCI fields must stay beside the healthcheck", got)
	}
}
