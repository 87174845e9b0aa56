package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/lab"
)

// faultTable is the nftables table the fault tests make inside a lab
// node's network namespace, never the host's. Its name holds "shoal" so
// that the suite's leak check would catch one made in the host's
// namespace by mistake.
const faultTable = "shoal_e2e_fault"

// faultRPC bounds one Control API call made while faults are in place: a
// paused or cut off manager must not stall the test.
const faultRPC = 2 * time.Second

// faults injects faults into a lab: SIGSTOPped shoalds and nftables drops
// in the nodes' namespaces. Whatever is still in place when the test
// ends, failed or not, is undone: every paused shoald is continued and
// every fault table deleted.
type faults struct {
	c *labCluster

	mu      sync.Mutex
	paused  map[string]bool
	dropped map[string]bool
}

func newFaults(t *testing.T, c *labCluster) *faults {
	f := &faults{c: c, paused: map[string]bool{}, dropped: map[string]bool{}}
	// Registered after newLabCluster's cleanup, so it runs before the lab
	// goes down.
	t.Cleanup(func() {
		if err := f.healAll(); err != nil {
			t.Errorf("undo faults: %v", err)
		}
	})
	return f
}

// pause stops node's shoald with SIGSTOP.
func (f *faults) pause(node string) error {
	f.mu.Lock()
	f.paused[node] = true
	f.mu.Unlock()
	return f.c.PauseNode(node)
}

// resume continues a paused shoald.
func (f *faults) resume(node string) error {
	if err := f.c.ResumeNode(node); err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.paused, node)
	f.mu.Unlock()
	return nil
}

// drop black-holes node's traffic with peers (lab node names) inside
// node's namespace: packets from them in and to them out are dropped,
// not rejected, so connections hang as on a dead link instead of failing
// fast. It replaces any drop already on node.
func (f *faults) drop(node string, peers ...string) error {
	var addrs []string
	for _, p := range peers {
		n, err := f.c.Node(p)
		if err != nil {
			return err
		}
		addrs = append(addrs, n.Addr.String())
	}
	set := strings.Join(addrs, ", ")
	// One nft transaction: the table is made (if missing), removed and
	// made again with the new rules, so a replace is atomic. Priority
	// -300 is before conntrack: established connections are cut too.
	script := fmt.Sprintf(`table inet %[1]s {}
delete table inet %[1]s
table inet %[1]s {
	chain input {
		type filter hook input priority -300; policy accept;
		ip saddr { %[2]s } drop
	}
	chain output {
		type filter hook output priority -300; policy accept;
		ip daddr { %[2]s } drop
	}
}
`, faultTable, set)
	f.mu.Lock()
	f.dropped[node] = true
	f.mu.Unlock()
	if out, err := f.nft(node, script, "-f", "-"); err != nil {
		return fmt.Errorf("drop traffic of %s with %v: %w\n%s", node, peers, err, out)
	}
	return nil
}

// undrop removes node's fault table.
func (f *faults) undrop(node string) error {
	out, err := f.nft(node, "", "delete", "table", "inet", faultTable)
	if err != nil && !strings.Contains(out, "No such file") {
		return fmt.Errorf("remove the fault table of %s: %w\n%s", node, err, out)
	}
	f.mu.Lock()
	delete(f.dropped, node)
	f.mu.Unlock()
	return nil
}

// nft runs nft with args inside node's namespace, script on its stdin.
func (f *faults) nft(node, script string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nft", args...)
	cmd.Stdin = strings.NewReader(script)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := f.c.Start(node, cmd); err != nil {
		return "", err
	}
	err := cmd.Wait()
	return out.String(), err
}

// healAll undoes every fault in place.
func (f *faults) healAll() error {
	f.mu.Lock()
	var paused, dropped []string
	for n := range f.paused {
		paused = append(paused, n)
	}
	for n := range f.dropped {
		dropped = append(dropped, n)
	}
	f.mu.Unlock()
	var errs []error
	for _, n := range paused {
		// A node killed since it was paused has nothing to continue.
		if running, _ := f.c.Running(n); !running {
			f.mu.Lock()
			delete(f.paused, n)
			f.mu.Unlock()
			continue
		}
		errs = append(errs, f.resume(n))
	}
	for _, n := range dropped {
		errs = append(errs, f.undrop(n))
	}
	return errors.Join(errs...)
}

// listNodesVia asks one manager for the nodes, bounded by faultRPC.
func (c *labCluster) listNodesVia(name string) ([]*api.Node, error) {
	client, closer, err := c.Client(name)
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	ctx, cancel := context.WithTimeout(context.Background(), faultRPC)
	defer cancel()
	resp, err := client.ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil {
		return nil, fmt.Errorf("list nodes via %s: %w", name, err)
	}
	return resp.GetNodes(), nil
}

// leaderSeenBy is the leader as the managers other than not see it, when
// one of them names one.
func (c *labCluster) leaderSeenBy(not ...string) (string, error) {
	var errs []error
	for _, m := range c.names(lab.RoleManager) {
		if slices.Contains(not, m) {
			continue
		}
		nodes, err := c.listNodesVia(m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if l := leaders(nodes); len(l) == 1 && !slices.Contains(not, l[0]) {
			return l[0], nil
		}
	}
	return "", fmt.Errorf("no leader named: %w", errors.Join(errs...))
}
