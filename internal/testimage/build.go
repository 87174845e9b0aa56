package testimage

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-project/shoal/image"
)

// EchoRef is the reference tests use for the echo image.
const EchoRef = "shoal.test/echo:latest"

const (
	modulePath = "github.com/shoal-project/shoal"
	echoPkg    = "./internal/testimage/echo"
)

// EchoOption varies the echo image.
type EchoOption func(*Image)

// WithHealthcheck gives the echo image a HEALTHCHECK, as a Dockerfile's
// would (for example Test ["CMD", "/echo", "health"]).
func WithHealthcheck(hc image.Healthcheck) EchoOption {
	return func(img *Image) { img.Healthcheck = &hc }
}

// BuildEcho compiles internal/testimage/echo as a static binary and writes
// an OCI image tarball at path naming the image ref, with entrypoint /echo.
// It finds the module itself, so it works from any working directory inside
// the checkout (every test's), and needs the go command on PATH.
func BuildEcho(ctx context.Context, path, ref string, opts ...EchoOption) error {
	tarball, err := echoTarball(ctx, ref, opts...)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, tarball, 0o644); err != nil {
		return fmt.Errorf("write echo image %s: %w", path, err)
	}
	return nil
}

// echoTarball builds the echo image in memory. The binary is built once
// per process: every test in a package may load the image, and some vary
// it.
func echoTarball(ctx context.Context, ref string, opts ...EchoOption) ([]byte, error) {
	bin, err := echoBinary(ctx)
	if err != nil {
		return nil, err
	}
	img := echoImage(ref, bin)
	for _, o := range opts {
		o(&img)
	}
	var buf bytes.Buffer
	if _, err := WriteOCI(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// echoBin keeps the echo binary of this process.
var echoBin struct {
	sync.Mutex
	bin []byte
}

func echoBinary(ctx context.Context) ([]byte, error) {
	echoBin.Lock()
	defer echoBin.Unlock()
	if echoBin.bin != nil {
		return echoBin.bin, nil
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return nil, err
	}
	bin, err := buildStatic(ctx, root, echoPkg)
	if err != nil {
		return nil, err
	}
	echoBin.bin = bin
	return bin, nil
}

// echoImage is the echo binary plus the few files a container expects: a
// writable /tmp and user and group databases, so a task may run as nobody,
// and /bin/sh, echo's minimal shell, for CMD-SHELL health checks.
func echoImage(ref string, bin []byte) Image {
	return Image{
		Ref: ref,
		Files: []File{
			{Path: "/echo", Data: bin, Mode: 0o755},
			{Path: "/bin/sh", Data: []byte("/echo"), Mode: fs.ModeSymlink | 0o777},
			{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
			{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/:/echo\nnobody:x:65534:65534:nobody:/:/echo\n"), Mode: 0o644},
			{Path: "/etc/group", Data: []byte("root:x:0:\nnogroup:x:65534:\n"), Mode: 0o644},
		},
		Config: ocispec.ImageConfig{
			Entrypoint: []string{"/echo"},
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			WorkingDir: "/",
			ExposedPorts: map[string]struct{}{
				"80/tcp": {},
				"80/udp": {},
				"7/tcp":  {},
			},
			Labels: map[string]string{"org.opencontainers.image.title": "shoal echo test workload"},
		},
	}
}

// moduleRoot finds the shoal checkout: first next to this source file
// (right whenever the tests of this checkout run), then through the go
// command from the working directory (a binary built elsewhere, e.g.
// shoal-testimage run from the repository root).
func moduleRoot(ctx context.Context) (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		root := filepath.Join(filepath.Dir(file), "..", "..")
		if isShoalModule(filepath.Join(root, "go.mod")) {
			return filepath.Clean(root), nil
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("find the shoal module: go command not on PATH: %w", err)
	}
	out, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the shoal module: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull || !isShoalModule(gomod) {
		return "", fmt.Errorf("find the shoal module: working directory is not inside the %s checkout (go env GOMOD=%q); run from the repository", modulePath, gomod)
	}
	return filepath.Dir(gomod), nil
}

// isShoalModule reports whether the go.mod at path declares this module.
func isShoalModule(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if mod, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(mod), `"`) == modulePath
		}
	}
	return false
}

// buildStatic compiles the main package pkg (relative to the module root)
// for linux on this architecture, without cgo so the binary needs nothing
// from the image. -trimpath and no VCS stamp make the binary, and so the
// image digest, depend only on the source.
func buildStatic(ctx context.Context, root, pkg string) ([]byte, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("build %s: go command not on PATH: %w", pkg, err)
	}
	dir, err := os.MkdirTemp("", "shoal-testimage-")
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", pkg, err)
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "bin")
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build %s: %w\n%s", pkg, err, stderr.Bytes())
	}
	bin, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("read built %s: %w", pkg, err)
	}
	return bin, nil
}

// LoadEcho builds the echo image (the binary once per process) and
// imports it into namespace, returning the image name (EchoRef).
func LoadEcho(ctx context.Context, address, namespace string, opts ...EchoOption) (string, error) {
	tarball, err := echoTarball(ctx, EchoRef, opts...)
	if err != nil {
		return "", err
	}
	names, err := image.ImportTo(ctx, address, namespace, bytes.NewReader(tarball))
	if err != nil {
		return "", err
	}
	for _, n := range names {
		if n == EchoRef {
			return n, nil
		}
	}
	return "", fmt.Errorf("load echo image: import named %q, not %s", names, EchoRef)
}
