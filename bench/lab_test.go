package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/lab"
)

// benchLab brings up a lab with the echo image on every node (also under
// each of refs), holding the machine's lab lock, and takes it down when b
// ends. It returns the lab and the directory of the checkout's binaries.
// It skips where no lab can run or another one is up.
func benchLab(b *testing.B, managers, workers int, refs ...string) (*lab.Lab, string) {
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
	var imgs []string
	for i, ref := range append([]string{testimage.EchoRef}, refs...) {
		img := filepath.Join(b.TempDir(), fmt.Sprintf("echo%d.tar", i))
		if err := testimage.BuildEcho(ctx, img, ref); err != nil {
			b.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	l, err := lab.Up(ctx, lab.Config{Managers: managers, Workers: workers, Shoald: filepath.Join(bin, "shoald"), Images: imgs})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Down(context.Background()) })
	return l, bin
}
