// Package testgrpc serves gRPC services to a test over an in-memory
// connection (bufconn): real gRPC framing, status codes, metadata and
// streams, without a socket or TLS.
//
// It is test support: only _test files import it.
package testgrpc

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
)

// bufferSize is the in-memory connection's buffer: large enough that no
// test's messages wait on it.
const bufferSize = 1 << 20

// Serve starts a gRPC server with the services register registers and
// returns a client connection to it. The connection and the server stop
// when the test ends, after the cleanups the test registers later (so a
// client the test starts afterwards is stopped before its server goes).
func Serve(t testing.TB, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(bufferSize)
	srv := grpc.NewServer()
	register(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-served
	})
	return conn
}
