package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager"
	"github.com/shoal-project/shoal/manager/state"
)

// unlockTimeout bounds `shoald unlock`'s call: the socket is local.
const unlockTimeout = 30 * time.Second

// lockedMessage is what a locked manager answers to everything but Unlock.
const lockedMessage = "this manager is locked (autolock): unlock it with `shoald unlock` and the cluster's unlock key"

// waitUnlock serves the NodeLock service, and nothing else, on the node's
// unix socket until a caller gives the key that unlocks the manager state
// in dataDir, and returns that key. The cluster port stays closed and the
// node's agent stopped meanwhile: a locked manager serves nothing.
func waitUnlock(ctx context.Context, socket, dataDir string, logger *slog.Logger) ([]byte, error) {
	l, err := listenUnix(socket)
	if err != nil {
		return nil, err
	}
	defer os.Remove(socket)
	got := make(chan []byte, 1)
	// No authorizer: the socket is root-only (0600 in a 0700 directory),
	// and Unlock is all it serves.
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
		return status.Error(codes.FailedPrecondition, lockedMessage)
	}))
	api.RegisterNodeLockServer(srv, &lockServer{dataDir: dataDir, got: got, logger: logger})
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(l)
	}()
	defer func() {
		// Unlock's answer goes out before the socket closes.
		srv.GracefulStop()
		<-served
	}()
	logger.Warn(lockedMessage, "socket", socket)
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case key := <-got:
		logger.Info("manager unlocked")
		return key, nil
	}
}

type lockServer struct {
	api.UnimplementedNodeLockServer
	dataDir string
	got     chan []byte
	logger  *slog.Logger
}

func (s *lockServer) Unlock(_ context.Context, req *api.UnlockRequest) (*api.UnlockResponse, error) {
	key, err := state.ParseUnlockKey(req.GetUnlockKey())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	switch err := manager.CheckUnlockKey(s.dataDir, req.GetUnlockKey()); {
	case errors.Is(err, manager.ErrWrongUnlockKey):
		// Never the key itself in the log.
		s.logger.Warn("refused an unlock attempt with a wrong key")
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		return nil, status.Errorf(codes.FailedPrecondition, "read this manager's keys: %v", err)
	}
	select {
	case s.got <- key:
	default: // unlocked already
	}
	return &api.UnlockResponse{}, nil
}

// Unlock gives a locked shoald (on cfg.Socket) the cluster's unlock key.
func Unlock(ctx context.Context, cfg Config, key string) error {
	cfg.defaults()
	ctx, cancel := context.WithTimeout(ctx, unlockTimeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+filepath.Clean(cfg.Socket), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to shoald at %s: %w", cfg.Socket, err)
	}
	defer conn.Close()
	_, err = api.NewNodeLockClient(conn).Unlock(ctx, &api.UnlockRequest{UnlockKey: strings.TrimSpace(key)})
	switch status.Code(err) {
	case codes.OK:
		return nil
	case codes.PermissionDenied, codes.Unimplemented:
		// A running node's socket serves the control API, not NodeLock.
		return errors.New("this shoald is not locked: there is nothing to unlock")
	case codes.Unavailable:
		return fmt.Errorf("no shoald answers on %s (is it running?): %v", cfg.Socket, status.Convert(err).Message())
	}
	return errors.New(status.Convert(err).Message())
}

// readUnlockKey reads the key from the first line of r (a terminal or a
// pipe: never a command-line argument, which other users can read).
func readUnlockKey(r io.Reader) (string, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("read the unlock key from standard input: %w", err)
	}
	return strings.TrimSpace(line), nil
}
