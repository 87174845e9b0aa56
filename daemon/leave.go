package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/image"
	"github.com/shoal-project/shoal/manager"
)

// Timings of `shoald leave`.
const (
	// leaveCallTimeout bounds one call to a manager or to the node's own
	// socket.
	leaveCallTimeout = 10 * time.Second
	// demoteTimeout bounds waiting for a manager that leave demoted to be
	// a worker: raft drops it, the leader records it, the node renews its
	// certificate and restarts in its new role, each in seconds.
	demoteTimeout = 2 * time.Minute
	// leaveRetry is the pause between tries while a demotion goes on.
	leaveRetry = 500 * time.Millisecond
	// stopWait bounds waiting for the node's shoald to stop after SIGTERM:
	// it stops its two servers, each within stopTimeout, then its agent.
	stopWait = 3*stopTimeout + 5*time.Second
)

// Leave makes this node leave its cluster, then removes what the node has
// on this host: its containers, images and containerd namespace, its
// kernel state (overlays, task interfaces, load balancers, nft tables)
// and its data dir. A shoald running on the data dir is stopped (SIGTERM)
// once the managers have removed the node.
//
// A worker asks the managers to remove it (Dispatcher.LeaveCluster); when
// none answers, leave refuses and changes nothing, unless force, which
// leaves anyway (the node then shows as down until `shoalctl node rm`).
// A manager is refused with the reason: the last one because leaving
// would end the cluster (force does that: it removes the cluster), any
// other because it must be demoted first (force demotes it, which the
// managers refuse if the others would lose their quorum, and leaves once
// it is a worker).
//
// When removing the local state fails, the data dir stays, so that
// `shoald leave --force` can be run again to finish.
func Leave(ctx context.Context, cfg Config, force bool) error {
	cfg.defaults()
	file, n, err := loadNode(cfg)
	if errors.Is(err, identity.ErrKeySealed) {
		// Only an autolocked manager's key is sealed; leave reads it from
		// disk, without the unlock key.
		return fmt.Errorf("this manager's key is sealed (autolock): demote it first (`shoalctl node demote %s`, which saves its key as a worker's, in the clear), or turn autolock off (`shoalctl cluster update --autolock=false`) on the last manager, then leave", file.NodeID)
	}
	if err != nil {
		return err
	}
	isManager := n.role == identity.RoleManager
	tell := true
	if isManager {
		others, err := otherManagers(ctx, cfg, file)
		if err != nil {
			return err
		}
		switch {
		case len(others) == 0 && !force:
			return errors.New("this node is the last manager of its cluster: leaving would end the cluster (its services, networks and images) and strand its workers; " +
				"remove the workers first (`shoald leave` on each), or end the cluster with `shoald leave --force`")
		case len(others) == 0:
			cfg.Logger.Warn("the last manager leaves: the cluster ends", "node", file.NodeID)
			tell = false
		case !force:
			return fmt.Errorf("this node is a manager (with %d others): demote it first (`shoalctl node demote %s` on a manager), or let `shoald leave --force` demote it, which is refused if the other managers would lose their quorum",
				len(others), file.NodeID)
		default:
			if err := demoteSelf(ctx, cfg, file); err != nil {
				return err
			}
		}
	}
	if tell {
		if err := leaveCluster(ctx, cfg, isManager); err != nil {
			if !force {
				return fmt.Errorf("%w; nothing was changed: run again once a manager is reachable, or leave without telling them with --force (then `shoalctl node rm --force %s` on a manager)", err, file.NodeID)
			}
			cfg.Logger.Warn("no manager removed this node; leaving anyway (--force): remove it on a manager with `shoalctl node rm --force`", "node", file.NodeID, "err", err)
		}
	}
	lock, err := stopNode(ctx, cfg)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := removeLocalState(ctx, cfg, file); err != nil {
		return fmt.Errorf("the node left the cluster, but removing its state on this host failed: %w; %s is kept: run `shoald leave --force` again to finish", err, cfg.DataDir)
	}
	cfg.Logger.Info("node left the cluster; its containers, network state and data dir are removed", "node", file.NodeID)
	return nil
}

// localControl is the control API of the node's own shoald, or nil when
// none serves the socket; the caller closes conn.
func localControl(socket string) (api.ControlClient, *grpc.ClientConn) {
	if _, err := os.Stat(socket); err != nil {
		return nil, nil
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil
	}
	return api.NewControlClient(conn), conn
}

// otherManagers are the managers of the cluster other than this node: as
// its running shoald knows them, or else as it last wrote them down.
func otherManagers(ctx context.Context, cfg Config, file nodeFile) ([]string, error) {
	if c, conn := localControl(cfg.Socket); c != nil {
		defer conn.Close()
		cctx, cancel := context.WithTimeout(ctx, leaveCallTimeout)
		defer cancel()
		resp, err := c.ListNodes(cctx, &api.ListNodesRequest{})
		if err == nil {
			var others []string
			for _, n := range resp.GetNodes() {
				if n.GetId() != file.NodeID && (n.GetRole() == api.NodeRole_NODE_ROLE_MANAGER || n.GetSpec().GetDesiredRole() == api.NodeRole_NODE_ROLE_MANAGER) {
					others = append(others, n.GetDescription().GetHostname())
				}
			}
			return others, nil
		}
		if status.Code(err) != codes.Unavailable {
			return nil, fmt.Errorf("list the cluster's managers through %s: %s", cfg.Socket, status.Convert(err).Message())
		}
	}
	return slices.DeleteFunc(slices.Clone(file.Managers), func(a string) bool { return a == file.AdvertiseAddr }), nil
}

// demoteSelf has the node's own shoald demote it; the managers check the
// quorum.
func demoteSelf(ctx context.Context, cfg Config, file nodeFile) error {
	c, conn := localControl(cfg.Socket)
	if c == nil {
		return fmt.Errorf("shoald does not run on %s, so it cannot demote this manager: start it, or demote it with `shoalctl node demote %s` on another manager", cfg.Socket, file.NodeID)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, leaveCallTimeout)
	defer cancel()
	got, err := c.GetNode(cctx, &api.GetNodeRequest{Node: file.NodeID})
	if err != nil {
		return fmt.Errorf("demote this manager: %s", status.Convert(err).Message())
	}
	spec := proto.Clone(got.GetNode().GetSpec()).(*api.NodeSpec)
	spec.DesiredRole = api.NodeRole_NODE_ROLE_WORKER
	if _, err := c.UpdateNode(cctx, &api.UpdateNodeRequest{Node: file.NodeID, Version: got.GetNode().GetMeta().GetVersion(), Spec: spec}); err != nil {
		return fmt.Errorf("demote this manager: %s", status.Convert(err).Message())
	}
	cfg.Logger.Info("demoted this manager; leaving once it is a worker", "node", file.NodeID)
	return nil
}

// leaveCluster asks the managers to remove this node, trying each it
// knows. demoting keeps trying for demoteTimeout while the managers still
// call the node a manager. The node's credentials are read again for
// every try: a demotion renews them.
func leaveCluster(ctx context.Context, cfg Config, demoting bool) error {
	deadline := time.Now()
	if demoting {
		deadline = deadline.Add(demoteTimeout)
	}
	for {
		err := leaveOnce(ctx, cfg)
		if err == nil || !demoting || status.Code(err) != codes.FailedPrecondition || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(leaveRetry):
		}
	}
}

// leaveOnce makes one round of LeaveCluster calls. A node the cluster no
// longer has (removed, or left before a failed clean-up) has left.
func leaveOnce(ctx context.Context, cfg Config) error {
	file, n, err := loadNode(cfg)
	if err != nil {
		return err
	}
	defer n.closeConns()
	var errs []error
	for _, addr := range file.Managers {
		conn, err := n.dial(addr)
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, leaveCallTimeout)
			_, err = api.NewDispatcherClient(conn).LeaveCluster(cctx, &api.LeaveClusterRequest{NodeId: file.NodeID})
			cancel()
		}
		switch {
		case err == nil:
			cfg.Logger.Info("the managers removed this node", "node", file.NodeID, "via", addr)
			return nil
		case status.Code(err) == codes.NotFound,
			status.Code(err) == codes.PermissionDenied && strings.Contains(err.Error(), "was removed from the cluster"):
			cfg.Logger.Info("the cluster no longer has this node", "node", file.NodeID, "via", addr)
			return nil
		case status.Code(err) == codes.FailedPrecondition:
			return status.Error(codes.FailedPrecondition, status.Convert(err).Message())
		}
		errs = append(errs, fmt.Errorf("%s: %s", addr, status.Convert(err).Message()))
	}
	if len(errs) == 0 {
		return errors.New("this node knows no manager")
	}
	return fmt.Errorf("no manager removed this node: %w", errors.Join(errs...))
}

// stopNode stops the shoald that holds the data dir, if one does, and
// returns the data dir's lock.
func stopNode(ctx context.Context, cfg Config) (*os.File, error) {
	deadline := time.Now().Add(stopWait)
	signalled := 0
	for {
		lock, err := lockDataDir(cfg.DataDir)
		if err == nil {
			return lock, nil
		}
		if !errors.Is(err, errDataDirInUse) {
			return nil, err
		}
		if pid := lockHolder(cfg.DataDir); pid != 0 && pid != signalled {
			cfg.Logger.Info("stopping this node's shoald", "pid", pid)
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
				return nil, fmt.Errorf("stop shoald (pid %d): %w", pid, err)
			}
			signalled = pid
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the shoald on %s did not stop within %v: stop it (systemctl stop shoald) and run `shoald leave --force`", cfg.DataDir, stopWait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// removeLocalState removes what the node has on this host: containerd
// namespace (containers, images), kernel state, then the data dir. The
// data dir goes only when the rest did.
func removeLocalState(ctx context.Context, cfg Config, file nodeFile) error {
	var errs []error
	if err := image.PurgeNamespace(ctx, cfg.ContainerdAddress, cfg.ContainerdNamespace); err != nil {
		errs = append(errs, fmt.Errorf("remove containerd namespace %s: %w", cfg.ContainerdNamespace, err))
	}
	network, _, err := newNetworkAgent(cfg, file)
	if err == nil {
		err = network.Teardown()
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("remove network state: %w", err))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	removeNodeState(cfg.DataDir)
	for _, p := range []string{manager.ImageDir(cfg.DataDir), workerDir(cfg.DataDir), cfg.taskLogDir(), networkDir(cfg.DataDir), lockPath(cfg.DataDir)} {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	// The data dir itself when nothing else is in it: it may be a
	// directory the node was given, not one it made.
	if err := os.Remove(cfg.DataDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		cfg.Logger.Warn("data dir kept: it holds files shoal did not make", "data_dir", cfg.DataDir, "err", err)
	}
	if !serves(cfg.Socket) {
		os.Remove(cfg.Socket)
	}
	return errors.Join(errs...)
}
