package store

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/go-memdb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// ReadTx reads one consistent version of the store.
type ReadTx struct {
	txn *memdb.Txn
}

func all[T any](tx ReadTx, table, index string, args ...any) []T {
	it, err := tx.txn.Get(table, index, args...)
	if err != nil {
		panic(fmt.Sprintf("store: read %s by %s: %v", table, index, err)) // schema bug
	}
	var out []T
	for o := it.Next(); o != nil; o = it.Next() {
		out = append(out, o.(T))
	}
	return out
}

func first[T any](tx ReadTx, table, index string, args ...any) T {
	var zero T
	o, err := tx.txn.First(table, index, args...)
	if err != nil {
		panic(fmt.Sprintf("store: read %s by %s: %v", table, index, err))
	}
	if o == nil {
		return zero
	}
	return o.(T)
}

// Cluster returns the cluster object, or nil before init.
func (tx ReadTx) Cluster() *api.Cluster {
	cs := tx.Clusters()
	if len(cs) == 0 {
		return nil
	}
	return cs[0]
}

// Clusters returns every cluster object (there is one).
func (tx ReadTx) Clusters() []*api.Cluster { return all[*api.Cluster](tx, tableCluster, indexID) }

// Nodes returns every node, ordered by id.
func (tx ReadTx) Nodes() []*api.Node { return all[*api.Node](tx, tableNode, indexID) }

// Node returns the node with this id, or nil.
func (tx ReadTx) Node(id string) *api.Node { return first[*api.Node](tx, tableNode, indexID, id) }

// Services returns every service, ordered by id.
func (tx ReadTx) Services() []*api.Service { return all[*api.Service](tx, tableService, indexID) }

// Service returns the service with this id, or nil.
func (tx ReadTx) Service(id string) *api.Service {
	return first[*api.Service](tx, tableService, indexID, id)
}

// ServiceByName returns the service with this name, or nil.
func (tx ReadTx) ServiceByName(name string) *api.Service {
	return first[*api.Service](tx, tableService, indexName, name)
}

// Images returns every loaded image, ordered by id.
func (tx ReadTx) Images() []*api.Image { return all[*api.Image](tx, tableImage, indexID) }

// Image returns the image with this digest, or nil.
func (tx ReadTx) Image(id string) *api.Image { return first[*api.Image](tx, tableImage, indexID, id) }

// Networks returns every network, ordered by id.
func (tx ReadTx) Networks() []*api.Network { return all[*api.Network](tx, tableNetwork, indexID) }

// Network returns the network with this id, or nil.
func (tx ReadTx) Network(id string) *api.Network {
	return first[*api.Network](tx, tableNetwork, indexID, id)
}

// NetworkByName returns the network with this name, or nil.
func (tx ReadTx) NetworkByName(name string) *api.Network {
	return first[*api.Network](tx, tableNetwork, indexName, name)
}

// LookupNetwork finds a network by id, name, or unique id prefix.
func (tx ReadTx) LookupNetwork(ref string) (*api.Network, error) {
	if ref == "" {
		return nil, fmt.Errorf("network name or id is empty")
	}
	if n := tx.Network(ref); n != nil {
		return n, nil
	}
	if n := tx.NetworkByName(ref); n != nil {
		return n, nil
	}
	return pick(all[*api.Network](tx, tableNetwork, indexID+"_prefix", ref), "network", ref)
}

// Tasks returns every task, ordered by id.
func (tx ReadTx) Tasks() []*api.Task { return all[*api.Task](tx, tableTask, indexID) }

// Task returns the task with this id, or nil.
func (tx ReadTx) Task(id string) *api.Task { return first[*api.Task](tx, tableTask, indexID, id) }

// TasksOfService returns a service's tasks.
func (tx ReadTx) TasksOfService(serviceID string) []*api.Task {
	return all[*api.Task](tx, tableTask, indexService, serviceID)
}

// TasksOfNode returns the tasks assigned to a node.
func (tx ReadTx) TasksOfNode(nodeID string) []*api.Task {
	return all[*api.Task](tx, tableTask, indexNode, nodeID)
}

// LookupService finds a service by id, name, or unique id prefix, the way
// users name it on the command line.
func (tx ReadTx) LookupService(ref string) (*api.Service, error) {
	if ref == "" {
		return nil, fmt.Errorf("service name or id is empty")
	}
	if s := tx.Service(ref); s != nil {
		return s, nil
	}
	if s := tx.ServiceByName(ref); s != nil {
		return s, nil
	}
	matches := all[*api.Service](tx, tableService, indexID+"_prefix", ref)
	return pick(matches, "service", ref)
}

// LookupNode finds a node by id, hostname, or unique id prefix.
func (tx ReadTx) LookupNode(ref string) (*api.Node, error) {
	if ref == "" {
		return nil, fmt.Errorf("node name or id is empty")
	}
	if n := tx.Node(ref); n != nil {
		return n, nil
	}
	var byName []*api.Node
	for _, n := range tx.Nodes() {
		if n.GetDescription().GetHostname() == ref {
			byName = append(byName, n)
		}
	}
	if len(byName) > 0 {
		return pick(byName, "node", ref)
	}
	return pick(all[*api.Node](tx, tableNode, indexID+"_prefix", ref), "node", ref)
}

func pick[T interface{ GetId() string }](matches []T, kind, ref string) (T, error) {
	var zero T
	switch len(matches) {
	case 0:
		return zero, fmt.Errorf("%s %q: %w", kind, ref, ErrNotFound)
	case 1:
		return matches[0], nil
	}
	ids := make([]string, 0, len(matches))
	for _, m := range matches {
		ids = append(ids, m.GetId())
	}
	sort.Strings(ids)
	return zero, fmt.Errorf("%s %q is ambiguous: it matches %s; give more of the id", kind, ref, strings.Join(ids, ", "))
}

// NodeByHostname is the node other than exceptID whose hostname is
// hostname (DNS names: case does not matter), or nil. Hostnames are
// unique in the store (see applyAction).
func NodeByHostname(tx ReadTx, hostname, exceptID string) *api.Node {
	if hostname == "" {
		return nil
	}
	for _, n := range tx.Nodes() {
		if n.GetId() != exceptID && strings.EqualFold(n.GetDescription().GetHostname(), hostname) {
			return n
		}
	}
	return nil
}
