package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/image"
)

// containerdDialTimeout bounds connecting to containerd in Down: a
// missing containerd must not hang the rest of the clean-up.
const containerdDialTimeout = 10 * time.Second

// Down removes every lab on this machine and everything one left behind,
// found by name rather than through the state file, so it also cleans up
// after a crash or a half-done Up: processes running on a lab data dir or
// inside a lab network namespace, the containerd namespaces shoal-lab-*
// (tasks, containers, snapshots, images, content), mounts under the lab's
// directories, the network namespaces shoal-lab-*, the veths sl-* and the
// bridge, then /var/lib/shoal-lab and /run/shoal-lab (with the context
// file). Every step runs even when an earlier one failed; running it
// again is harmless.
func Down(ctx context.Context, containerdAddress string, log *slog.Logger) error {
	if containerdAddress == "" {
		containerdAddress = DefaultContainerd
	}
	if log == nil {
		log = slog.Default()
	}
	if os.Geteuid() != 0 {
		return errors.New("lab down needs root")
	}
	var errs []error
	if err := killLabProcesses(ctx, log); err != nil {
		errs = append(errs, err)
	}
	if err := purgeContainerd(ctx, containerdAddress, log); err != nil {
		errs = append(errs, err)
	}
	if err := killOrphanShims(ctx, log); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(DataRoot, RunRoot); err != nil {
		errs = append(errs, err)
	}
	if names, err := labNetns(); err != nil {
		errs = append(errs, err)
	} else {
		for _, name := range names {
			log.Info("removing network namespace", "netns", name)
			if err := deleteNetns(name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if links, err := labLinks(); err != nil {
		errs = append(errs, err)
	} else {
		for _, l := range links {
			log.Info("removing link", "link", l.Attrs().Name)
			if err := netlinkDelete(l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, dir := range []string{DataRoot, RunRoot} {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// labProcesses finds the processes a lab runs: shoald on a lab data dir,
// and anything else inside a lab network namespace (a `lab exec` left in
// the background), which would keep the namespace alive.
func labProcesses() ([]procInfo, error) {
	names, err := labNetns()
	if err != nil {
		return nil, err
	}
	inodes := map[uint64]bool{}
	for _, name := range names {
		if ino, err := netnsInode(filepath.Join(netnsDir, name)); err == nil {
			inodes[ino] = true
		}
	}
	// The host's own namespace is never a lab's, even if a namespace file
	// was left unmounted and so shows the inode of its directory.
	if ino, err := netnsInode("/proc/self/ns/net"); err == nil {
		delete(inodes, ino)
	}
	procs, err := listProcs()
	if err != nil {
		return nil, err
	}
	var out []procInfo
	for _, p := range procs {
		if namesLabDataDir(p.args) {
			out = append(out, p)
			continue
		}
		if len(inodes) == 0 {
			continue
		}
		if ino, err := netnsInode(fmt.Sprintf("/proc/%d/ns/net", p.pid)); err == nil && inodes[ino] {
			out = append(out, p)
		}
	}
	return out, nil
}

func killLabProcesses(ctx context.Context, log *slog.Logger) error {
	procs, err := labProcesses()
	if err != nil {
		return err
	}
	var pids []int
	for _, p := range procs {
		log.Info("killing lab process", "pid", p.pid, "cmd", strings.Join(redactToken(p.args), " "))
		pids = append(pids, p.pid)
	}
	return killAndWait(ctx, pids)
}

// killOrphanShims ends the containerd shims of lab namespaces that outlived
// the purge. containerd shuts a shim down as part of deleting its task; a
// node killed while it was deleting a task (a service removed just before
// Down) can leave the shim without a task, and containerd then never
// stops it.
func killOrphanShims(ctx context.Context, log *slog.Logger) error {
	procs, err := listProcs()
	if err != nil {
		return err
	}
	var pids []int
	for _, p := range procs {
		if ns, ok := labShim(p); ok {
			log.Info("killing orphaned containerd shim", "pid", p.pid, "namespace", ns)
			pids = append(pids, p.pid)
		}
	}
	return killAndWait(ctx, pids)
}

// labShim reports whether p is a containerd shim of a lab node's
// containerd namespace, and which.
func labShim(p procInfo) (namespace string, ok bool) {
	i := slices.Index(p.args, "-namespace")
	if i < 0 || i+1 >= len(p.args) || !strings.HasPrefix(p.args[i+1], NamespacePrefix) {
		return "", false
	}
	return p.args[i+1], true
}

// purgeContainerd removes every containerd namespace of a lab node.
func purgeContainerd(ctx context.Context, address string, log *slog.Logger) error {
	if _, err := os.Stat(address); err != nil {
		return fmt.Errorf("containerd at %s: %w: its %s* namespaces, if any, are left; start containerd and run `shoalctl lab down` again", address, err, NamespacePrefix)
	}
	c, err := containerd.New(address, containerd.WithTimeout(containerdDialTimeout))
	if err != nil {
		return fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	defer c.Close()
	all, err := c.NamespaceService().List(ctx)
	if err != nil {
		return fmt.Errorf("list containerd namespaces: %w", err)
	}
	var errs []error
	for _, ns := range all {
		if !strings.HasPrefix(ns, NamespacePrefix) {
			continue
		}
		log.Info("removing containerd namespace", "namespace", ns)
		pctx, cancel := context.WithTimeout(ctx, purgeTimeout)
		err := image.PurgeNamespace(pctx, address, ns)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("remove containerd namespace %s: %w", ns, err))
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount at or below the given directories,
// deepest first, so RemoveAll never walks into a mounted filesystem.
func unmountUnder(dirs ...string) error {
	points, err := mountPoints()
	if err != nil {
		return err
	}
	var mine []string
	for _, p := range points {
		for _, d := range dirs {
			if p == d || strings.HasPrefix(p, d+"/") {
				mine = append(mine, p)
				break
			}
		}
	}
	slices.SortFunc(mine, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range mine {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// mountPoints lists this mount namespace's mount points.
func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		out = append(out, unescapeMount(fields[4]))
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Leftovers names what a lab (up, or crashed) holds on the machine:
// files, network namespaces, links, processes, containerd namespaces and
// their shims. Up refuses to start while there is any; after Down there
// is none.
func Leftovers(ctx context.Context, containerdAddress string) []string {
	if containerdAddress == "" {
		containerdAddress = DefaultContainerd
	}
	var found []string
	for _, p := range []string{stateFile, ContextFile, DataRoot, RunRoot} {
		if _, err := os.Stat(p); err == nil {
			found = append(found, p)
		}
	}
	if names, err := labNetns(); err == nil {
		for _, n := range names {
			found = append(found, "network namespace "+n)
		}
	}
	if links, err := labLinks(); err == nil {
		for _, l := range links {
			found = append(found, "link "+l.Attrs().Name)
		}
	}
	if procs, err := labProcesses(); err == nil {
		for _, p := range procs {
			found = append(found, "process "+strconv.Itoa(p.pid))
		}
	}
	if procs, err := listProcs(); err == nil {
		for _, p := range procs {
			if ns, ok := labShim(p); ok {
				found = append(found, "containerd shim "+strconv.Itoa(p.pid)+" of "+ns)
			}
		}
	}
	if _, err := os.Stat(containerdAddress); err == nil {
		if c, err := containerd.New(containerdAddress, containerd.WithTimeout(containerdDialTimeout)); err == nil {
			ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
			if all, err := c.NamespaceService().List(ctx); err == nil {
				for _, ns := range all {
					if strings.HasPrefix(ns, NamespacePrefix) {
						found = append(found, "containerd namespace "+ns)
					}
				}
			}
			cancel()
			c.Close()
		}
	}
	return found
}
