package identity

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// gRPC keepalive on the cluster port. A connection whose peer vanished
// without closing it (a host that died, a network that drops packets, a
// process that was stopped) otherwise stays "ready" until TCP gives up,
// which takes minutes, and every stream on it hangs that long. Client and
// server must agree: a server closes a connection whose client pings more
// often than its enforcement policy allows (GOAWAY "too_many_pings").
//
// Keepalive is the backstop for streams and idle connections; fast
// detection of a lost manager is the worker's heartbeat deadline (gRPC
// will not ping more often than every 10 s).
const (
	// KeepaliveTime is how long a connection may be silent before its
	// client pings the other end: gRPC's minimum.
	KeepaliveTime = 10 * time.Second
	// KeepaliveTimeout is how long a ping may stay unanswered before the
	// connection is closed; a live peer answers in milliseconds, even on a
	// busy machine, so a dead one is noticed in at most 15 s of silence.
	KeepaliveTimeout = 5 * time.Second
	// keepaliveMinTime is the most often a server lets a client ping:
	// half the client's interval, so that jitter never trips it.
	keepaliveMinTime = KeepaliveTime / 2
)

// KeepaliveDialOption makes a client connection to the cluster port ping
// its server when silent, with or without open streams, and close itself
// when the server stops answering.
func KeepaliveDialOption() grpc.DialOption {
	return grpc.WithKeepaliveParams(keepalive.ClientParameters{
		Time:                KeepaliveTime,
		Timeout:             KeepaliveTimeout,
		PermitWithoutStream: true,
	})
}

// KeepaliveServerOptions make the cluster port's server ping silent
// clients (closing the connections of those that vanished, and with them
// their sessions' streams) and accept the pings KeepaliveDialOption sends.
func KeepaliveServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    KeepaliveTime,
			Timeout: KeepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             keepaliveMinTime,
			PermitWithoutStream: true,
		}),
	}
}
