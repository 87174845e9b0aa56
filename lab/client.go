package lab

import (
	"fmt"
	"net/netip"
	"os/exec"
)

// ClientName is the name of the lab's client namespace: a machine on the
// underlay that runs no shoald, from which tests reach the nodes' published
// ports as an outside client would.
const ClientName = "client"

// Client is the lab's client namespace.
type Client struct {
	// Namespace is the named network namespace (as `ip netns` lists it).
	Namespace string
	// Addr is the client's address on the underlay.
	Addr netip.Addr
}

// AddClient makes the client namespace, on the underlay bridge with the
// last address of the subnet. Down removes it with the nodes.
func (l *Lab) AddClient() (Client, error) {
	subnet := l.st.Subnet
	addr := clientAddr(subnet)
	for _, n := range l.st.Nodes {
		if n.Addr == addr {
			return Client{}, fmt.Errorf("lab client: subnet %s has no address left for a client", subnet)
		}
	}
	c := Node{Name: ClientName, Addr: addr, Namespace: NamespacePrefix + ClientName}
	if err := createNetns(c.Namespace); err != nil {
		return Client{}, err
	}
	if err := plumbNode(c, l.st.Gateway); err != nil {
		return Client{}, fmt.Errorf("lab client: %w", err)
	}
	return Client{Namespace: c.Namespace, Addr: addr}, nil
}

// Start starts cmd inside the client namespace.
func (c Client) Start(cmd *exec.Cmd) error { return startIn(c.Namespace, cmd) }

// clientAddr is the client's address: the subnet's last but one (the
// last is the broadcast address), away from the nodes, which take the
// first ones.
func clientAddr(subnet netip.Prefix) netip.Addr {
	last := subnet.Addr()
	for next := last.Next(); next.IsValid() && subnet.Contains(next); next = next.Next() {
		last = next
	}
	return last.Prev()
}
