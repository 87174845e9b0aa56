package testcluster

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// HTTPGetInNetns fetches http://127.0.0.1:port/path from inside the
// network namespace of process pid: the task's own loopback, so test
// traffic never leaves namespaces the test made. The request runs in a
// child process (nsenter + shoal-testimage get): switching a thread of the
// test binary into another namespace leaked into later child processes.
func HTTPGetInNetns(bin string, pid uint32, port int, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := fmt.Sprintf("http://127.0.0.1:%d%s", port, path)
	cmd := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(int(pid)), "-n", filepath.Join(bin, "shoal-testimage"), "get", url)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("GET %s in netns of pid %d: %v: %s", url, pid, err, errb.String())
	}
	return out.String(), nil
}

// HTTPGet fetches a URL from inside the node's task at pid (see
// HTTPGetInNetns), with the test binaries.
func (n *Node) HTTPGet(pid uint32, port int, path string) (string, error) {
	return HTTPGetInNetns(n.bin, pid, port, path)
}
