package bench

import (
	"context"
	"path/filepath"
	"testing"

	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/lab"
)

// benchLab brings up a lab with the echo image on every node, holding the
// machine's lab lock, and takes it down when b ends. It returns the lab
// and the directory of the checkout's binaries. It skips where no lab can
// run or another one is up.
func benchLab(b *testing.B, managers, workers int) (*lab.Lab, string) {
	tc.Skip(b)
	ctx := context.Background()
	release, err := lab.Exclusive(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(release)
	if left := lab.Leftovers(ctx, tc.ContainerdAddress); len(left) > 0 {
		b.Skipf("a lab is up (%v): run `shoalctl lab down` first", left)
	}
	bin := tc.Binaries(b)
	img := filepath.Join(b.TempDir(), "echo.tar")
	if err := testimage.BuildEcho(ctx, img, testimage.EchoRef); err != nil {
		b.Fatal(err)
	}
	l, err := lab.Up(ctx, lab.Config{Managers: managers, Workers: workers, Shoald: filepath.Join(bin, "shoald"), Images: []string{img}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Down(context.Background()) })
	return l, bin
}
