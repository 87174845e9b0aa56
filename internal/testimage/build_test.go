package testimage

import (
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-project/shoal/image"
)

const (
	containerdSocket = "/run/containerd/containerd.sock"
	// testTimeout only stops a wedged containerd or go build from hanging
	// the run; a cold build of the echo on a loaded 2-core machine takes
	// minutes.
	testTimeout = 5 * time.Minute
)

// echoLayer builds the echo image into a temp file and returns the files
// of its layer and its image config.
func echoLayer(t *testing.T, ctx context.Context) (map[string][]byte, ocispec.Image, ocispec.Descriptor) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "echo.tar")
	if err := BuildEcho(ctx, path, EchoRef); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, b)
	var index ocispec.Index
	decode(t, files["index.json"], &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests", len(index.Manifests))
	}
	var manifest ocispec.Manifest
	decode(t, blob(t, files, index.Manifests[0]), &manifest)
	var config ocispec.Image
	decode(t, blob(t, files, manifest.Config), &config)
	layer, _ := readTar(t, blob(t, files, manifest.Layers[0]))
	return layer, config, index.Manifests[0]
}

func TestBuildEcho(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// Any working directory must do, as for a test in another package.
	t.Chdir(t.TempDir())

	layer, config, desc := echoLayer(t, ctx)
	if got := desc.Annotations[AnnotationImageName]; got != EchoRef {
		t.Errorf("image name %q, want %s", got, EchoRef)
	}
	if !slices.Equal(config.Config.Entrypoint, []string{"/echo"}) {
		t.Errorf("entrypoint %q", config.Config.Entrypoint)
	}
	bin, ok := layer["echo"]
	if !ok {
		t.Fatal("no /echo in the layer")
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("/echo is not an ELF binary: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("/echo is dynamically linked (%v); the image has no libc", p.Type)
		}
	}
	if _, ok := layer["etc/passwd"]; !ok {
		t.Error("no /etc/passwd in the layer")
	}

	// Same source, same digest: tests may compare image IDs across builds.
	_, _, again := echoLayer(t, ctx)
	if again.Digest != desc.Digest {
		t.Errorf("two builds gave %s and %s", desc.Digest, again.Digest)
	}
}

func TestIsShoalModule(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content string
		want          bool
	}{
		{"shoal", "module github.com/shoal-project/shoal\n\ngo 1.26\n", true},
		{"quoted", "// comment\nmodule \"github.com/shoal-project/shoal\"\n", true},
		{"other module", "module github.com/shoal-project/shoal/tools\n", false},
		{"no module line", "go 1.26\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".mod")
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := isShoalModule(path); got != tt.want {
				t.Errorf("isShoalModule = %v, want %v", got, tt.want)
			}
		})
	}
	if isShoalModule(filepath.Join(dir, "missing.mod")) {
		t.Error("a missing go.mod counts as shoal")
	}
}

// requireContainerd skips unless the test can drive the host containerd.
func requireContainerd(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to talk to containerd")
	}
	if _, err := os.Stat(containerdSocket); err != nil {
		t.Skipf("containerd socket %s missing: %v", containerdSocket, err)
	}
}

// throwawayNamespace names a containerd namespace for this test and removes
// the images, containers and the namespace itself at cleanup.
func throwawayNamespace(t *testing.T, c *containerd.Client) string {
	t.Helper()
	suffix := make([]byte, 4)
	rand.Read(suffix)
	ns := "shoal-testimage-" + hex.EncodeToString(suffix)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), testTimeout)
		defer cancel()
		ctrs, err := c.Containers(ctx)
		if err != nil {
			t.Errorf("cleanup: list containers in %s: %v", ns, err)
		}
		for _, ctr := range ctrs {
			if task, err := ctr.Task(ctx, nil); err == nil {
				task.Delete(ctx, containerd.WithProcessKill)
			}
			if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
				t.Errorf("cleanup: delete container %s: %v", ctr.ID(), err)
			}
		}
		imgs, err := c.ImageService().List(ctx)
		if err != nil {
			t.Errorf("cleanup: list images in %s: %v", ns, err)
		}
		for _, img := range imgs {
			// Synchronous, so garbage collection has removed the content
			// and snapshots before the namespace delete checks emptiness.
			if err := c.ImageService().Delete(ctx, img.Name, images.SynchronousDelete()); err != nil {
				t.Errorf("cleanup: delete image %s: %v", img.Name, err)
			}
		}
		// Blobs of a failed import may still wait for garbage collection;
		// deleting a lease synchronously runs a collection now.
		if l, err := c.LeasesService().Create(ctx, leases.WithRandomID()); err == nil {
			c.LeasesService().Delete(ctx, l, leases.SynchronousDelete)
		}
		if err := c.NamespaceService().Delete(ctx, ns); err != nil {
			t.Errorf("cleanup: delete namespace %s: %v", ns, err)
		}
	})
	return ns
}

func TestImportEcho(t *testing.T) {
	requireContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := containerd.New(containerdSocket)
	if err != nil {
		t.Fatalf("connect to containerd: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ns := throwawayNamespace(t, c)
	nsCtx := namespaces.WithNamespace(ctx, ns)

	path := filepath.Join(t.TempDir(), "echo.tar")
	if err := BuildEcho(ctx, path, EchoRef); err != nil {
		t.Fatal(err)
	}
	// Twice: a second import of the same tarball must be harmless, as
	// when several tests load the image into one namespace.
	for i := range 2 {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		names, err := image.ImportTo(ctx, containerdSocket, ns, f)
		f.Close()
		if err != nil {
			t.Fatalf("import %d: %v", i, err)
		}
		if !slices.Equal(names, []string{EchoRef}) {
			t.Fatalf("import %d named %q, want [%s]", i, names, EchoRef)
		}
	}

	listed, err := c.ImageService().List(nsCtx)
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || listed[0].Name != EchoRef {
		t.Fatalf("images in %s: %+v", ns, listed)
	}
	img, err := c.GetImage(nsCtx, EchoRef)
	if err != nil {
		t.Fatal(err)
	}
	unpacked, err := img.IsUnpacked(nsCtx, "overlayfs")
	if err != nil || !unpacked {
		t.Fatalf("image unpacked for overlayfs = %v (err %v)", unpacked, err)
	}
	cfg, err := img.Spec(nsCtx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/echo"}) {
		t.Errorf("entrypoint as containerd sees it: %q", cfg.Config.Entrypoint)
	}

	t.Run("runs in a container", func(t *testing.T) {
		// The container has its own empty network namespace, so the echo
		// is asked to crash with a chosen status: that it exits with it
		// proves the binary starts from the unpacked rootfs.
		const wantCode = 4
		id := ns + "-run"
		ctr, err := c.NewContainer(nsCtx, id,
			containerd.WithNewSnapshot(id, img),
			containerd.WithNewSpec(oci.WithImageConfigArgs(img, []string{"--crash-after", "0s", "--exit-code", "4"})),
		)
		if err != nil {
			t.Fatalf("create container: %v", err)
		}
		task, err := ctr.NewTask(nsCtx, cio.NullIO)
		if err != nil {
			t.Fatalf("create task: %v", err)
		}
		exited, err := task.Wait(nsCtx)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(nsCtx); err != nil {
			t.Fatalf("start task: %v", err)
		}
		var status containerd.ExitStatus
		select {
		case status = <-exited:
		case <-nsCtx.Done():
			t.Fatal("echo did not exit in its container")
		}
		code, _, err := status.Result()
		if err != nil {
			t.Fatal(err)
		}
		if code != wantCode {
			t.Errorf("exit status %d, want %d", code, wantCode)
		}
	})
}

func TestLoadEcho(t *testing.T) {
	requireContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := containerd.New(containerdSocket)
	if err != nil {
		t.Fatalf("connect to containerd: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ns := throwawayNamespace(t, c)

	name, err := LoadEcho(ctx, containerdSocket, ns)
	if err != nil {
		t.Fatal(err)
	}
	if name != EchoRef {
		t.Errorf("LoadEcho = %q, want %s", name, EchoRef)
	}
	if _, err := c.GetImage(namespaces.WithNamespace(ctx, ns), EchoRef); err != nil {
		t.Errorf("image not in %s after LoadEcho: %v", ns, err)
	}
}

func TestImportRejects(t *testing.T) {
	requireContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := containerd.New(containerdSocket)
	if err != nil {
		t.Fatalf("connect to containerd: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ns := throwawayNamespace(t, c)

	// A layout whose index names no image: nothing to call it by.
	var unnamed bytes.Buffer
	if _, err := WriteOCI(&unnamed, testImage()); err != nil {
		t.Fatal(err)
	}
	stripped := stripNames(t, unnamed.Bytes())

	tests := []struct {
		name      string
		namespace string
		tarball   []byte
	}{
		{"no namespace", "", unnamed.Bytes()},
		{"not a tarball", ns, []byte("not a tar")},
		{"unnamed image", ns, stripped},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if names, err := image.ImportTo(ctx, containerdSocket, tt.namespace, bytes.NewReader(tt.tarball)); err == nil {
				t.Errorf("Import accepted it, named %q", names)
			}
		})
	}
}

// stripNames rewrites index.json of a layout tarball without annotations.
func stripNames(t *testing.T, tarball []byte) []byte {
	t.Helper()
	files, hdrs := readTar(t, tarball)
	var index ocispec.Index
	decode(t, files["index.json"], &index)
	for i := range index.Manifests {
		index.Manifests[i].Annotations = nil
	}
	b, err := json.Marshal(index)
	if err != nil {
		t.Fatal(err)
	}
	var entries []tarEntry
	for _, h := range hdrs {
		data := files[h.Name]
		if h.Name == "index.json" {
			data = b
			h.Size = int64(len(b))
		}
		entries = append(entries, tarEntry{hdr: h, data: data})
	}
	var out bytes.Buffer
	if err := writeTar(&out, entries); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
