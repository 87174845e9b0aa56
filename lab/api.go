package lab

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// dial makes a Control API client on a node's unix socket. The socket is
// root's only, so the kernel has authenticated us; no TLS on it.
func dial(socket string) (api.ControlClient, func() error, error) {
	conn, err := dialConn(socket)
	if err != nil {
		return nil, nil, err
	}
	return api.NewControlClient(conn), conn.Close, nil
}

func dialConn(socket string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	return conn, nil
}

// listNodes asks the shoald at socket for the cluster's nodes.
func listNodes(ctx context.Context, socket string) ([]*api.Node, error) {
	c, closeFn, err := dial(socket)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := c.ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil {
		return nil, fmt.Errorf("list nodes at %s: %w", socket, err)
	}
	return resp.GetNodes(), nil
}

// joinToken asks the shoald at socket for the token of a role.
func joinToken(ctx context.Context, socket string, role Role) (string, error) {
	c, closeFn, err := dial(socket)
	if err != nil {
		return "", err
	}
	defer closeFn()
	r := api.NodeRole_NODE_ROLE_WORKER
	if role == RoleManager {
		r = api.NodeRole_NODE_ROLE_MANAGER
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := c.GetJoinToken(ctx, &api.GetJoinTokenRequest{Role: r})
	if err != nil {
		return "", fmt.Errorf("get %s join token from %s: %w", role, socket, err)
	}
	if resp.GetToken() == "" {
		return "", fmt.Errorf("get %s join token from %s: the answer holds no token", role, socket)
	}
	return resp.GetToken(), nil
}

// nodeStates maps hostnames to what the cluster says of them: "ready",
// "down", plus " leader" for the raft leader.
func nodeStates(nodes []*api.Node) map[string]string {
	out := make(map[string]string, len(nodes))
	for _, n := range nodes {
		s := strings.ToLower(strings.TrimPrefix(n.GetStatus().GetState().String(), "NODE_STATE_"))
		if n.GetManagerStatus().GetLeader() {
			s += " leader"
		}
		out[n.GetDescription().GetHostname()] = s
	}
	return out
}

// readyNodes returns the hostnames of the nodes that are Ready.
func readyNodes(nodes []*api.Node) map[string]bool {
	out := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		if n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY {
			out[n.GetDescription().GetHostname()] = true
		}
	}
	return out
}
