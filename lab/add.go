package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
)

// AddConfig says what nodes to add to a lab that is up.
type AddConfig struct {
	// Managers and Workers are how many nodes of each role to add; they
	// are numbered on from the lab's last (manager4, worker3).
	Managers int
	Workers  int
	// Images are image tarballs to import into the new nodes besides
	// those the lab was made with; nodes added later get them too.
	Images []string
	// Progress, when set, receives one line per step.
	Progress io.Writer
	// Logger, when set, receives the details from now on (Load's lab
	// logs to slog.Default()).
	Logger *slog.Logger
}

// Add grows the lab: new nodes on its underlay, which join the cluster
// through a manager that answers, with the token of their role, as Up's
// do. It returns them once they are Ready.
//
// The state file names the new nodes before their shoald starts, so
// status, exec and down know them even when a join fails; nothing is
// rolled back then (the error says where the node's log is, and `lab
// down` removes everything as always). The context, which plain shoalctl
// reads, names new managers once they are Ready.
func (l *Lab) Add(ctx context.Context, cfg AddConfig) ([]Node, error) {
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	progress := func(format string, args ...any) { fmt.Fprintf(cfg.Progress, format+"\n", args...) }
	l.mu.Lock()
	if cfg.Logger != nil {
		l.log = cfg.Logger
	}
	nodes, err := planAdd(l.st, cfg.Managers, cfg.Workers)
	st := l.st
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("lab add needs root: it makes network namespaces, links and containerd namespaces")
	}
	if caps, err := probeShoald(ctx, st.Shoald); err != nil {
		return nil, err
	} else if !caps.join {
		return nil, fmt.Errorf("%s has no `join` command, so no node can be added", st.Shoald)
	}
	if err := checkImages(cfg.Images); err != nil {
		return nil, err
	}
	added := absPaths(cfg.Images)
	var images []string
	for _, img := range st.Images {
		if _, err := os.Stat(img); err != nil {
			// The lab is still worth growing: images can be loaded
			// through the cluster instead.
			progress("Image tarball %s, which the lab was made with, is gone: the new nodes will not have it (give it with --image, or load it with `shoalctl image load`)", img)
			continue
		}
		images = append(images, img)
	}
	images = appendNew(images, added...)

	// The tokens come from a manager that answers now, which is also the
	// one the nodes join through: manager1 may be the one that is down.
	via, tokens, err := l.tokens(ctx, nodes)
	if err != nil {
		return nil, err
	}

	l.mu.Lock()
	for _, n := range nodes {
		l.st.Nodes = insertNode(l.st.Nodes, n)
	}
	l.st.Images = appendNew(l.st.Images, added...)
	err = l.save()
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		progress("Creating node %s (%s) in network namespace %s", n.Name, n.Addr, n.Namespace)
		if err := l.makeNode(ctx, n, images); err != nil {
			return nil, fmt.Errorf("lab add %s: %w", n.Name, err)
		}
	}
	var names []string
	for _, n := range nodes {
		progress("Starting %s: shoald join as %s through %s", n.Name, n.Role, via.Name)
		if err := l.join(ctx, n, tokens[n.Role], via); err != nil {
			return nil, err
		}
		names = append(names, n.Name)
	}
	progress("Waiting for %s to be Ready", strings.Join(names, ", "))
	if err := l.WaitReady(ctx, names...); err != nil {
		return nil, err
	}
	if cfg.Managers > 0 {
		if err := l.writeContext(); err != nil {
			return nil, err
		}
	}
	return nodes, nil
}

// tokens asks the managers in turn for the join tokens of the nodes'
// roles, and returns the first manager that gave them all.
func (l *Lab) tokens(ctx context.Context, nodes []Node) (Node, map[Role]string, error) {
	var errs []error
	for _, m := range l.Nodes() {
		if m.Role != RoleManager {
			continue
		}
		tokens, err := tokensFrom(ctx, m, nodes)
		if err == nil {
			return m, tokens, nil
		}
		errs = append(errs, err)
	}
	return Node{}, nil, fmt.Errorf("lab add: no manager gave a join token: %w", errors.Join(errs...))
}

// tokensFrom asks manager m for the join tokens of the nodes' roles.
func tokensFrom(ctx context.Context, m Node, nodes []Node) (map[Role]string, error) {
	tokens := map[Role]string{}
	for _, n := range nodes {
		if tokens[n.Role] != "" {
			continue
		}
		t, err := joinToken(ctx, m.Socket, n.Role)
		if err != nil {
			return nil, err
		}
		tokens[n.Role] = t
	}
	return tokens, nil
}

// insertNode adds n to nodes, keeping the managers first.
func insertNode(nodes []Node, n Node) []Node {
	i := len(nodes)
	if n.Role == RoleManager {
		i = slices.IndexFunc(nodes, func(m Node) bool { return m.Role != RoleManager })
		if i < 0 {
			i = len(nodes)
		}
	}
	return slices.Insert(nodes, i, n)
}

// appendNew appends the items that list does not hold yet.
func appendNew(list []string, items ...string) []string {
	for _, it := range items {
		if !slices.Contains(list, it) {
			list = append(list, it)
		}
	}
	return list
}
