package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
)

// silentHold is how long a manager that stopped answering is passed over:
// about the time a new leader takes to be elected and known, after which a
// manager that came back (or a network that healed) is tried again.
const silentHold = 5 * time.Second

// ManagerPool is the Managers of a node that reaches its managers over the
// network: it keeps one lazily dialled connection per manager, goes to the
// leader when a follower names it, and otherwise tries them in turn,
// passing over those that stopped answering.
//
// It accepts a manager's certificate only for a node the managers last
// named as a manager (or that a manager it trusts named as the leader): a
// demoted or removed manager's certificate stays valid until it expires,
// and must not let that node pose as a manager. Until it knows the manager
// nodes (a node file from before they were recorded) it accepts any
// manager certificate of the cluster, as it always did.
type ManagerPool struct {
	dial     func(addr string, verify func(identity.Identity) error) (*grpc.ClientConn, error)
	onUpdate func(managers []*api.ManagerNode)

	mu       sync.Mutex
	managers []*api.ManagerNode
	addrs    []string
	next     int
	conns    map[string]*grpc.ClientConn
	// silent holds when each manager that stopped answering may be tried
	// again.
	silent map[string]time.Time

	// trustMu guards trusted apart from mu: Verify runs in handshakes,
	// which must never wait for a Close made under mu.
	trustMu sync.Mutex
	trusted map[string]bool // manager node ids; nil: not known
}

// NewManagerPool starts from managers; dial connects to a manager's
// address and must refuse the connection when verify refuses the
// identity in the manager's certificate; onUpdate (optional) is told of
// new manager lists so they can be kept for the next start.
func NewManagerPool(managers []*api.ManagerNode, dial func(addr string, verify func(identity.Identity) error) (*grpc.ClientConn, error), onUpdate func([]*api.ManagerNode)) *ManagerPool {
	p := &ManagerPool{dial: dial, onUpdate: onUpdate, conns: map[string]*grpc.ClientConn{}, silent: map[string]time.Time{}}
	p.set(managers)
	return p
}

// set replaces the manager list; p.mu held (or p not shared yet).
func (p *ManagerPool) set(managers []*api.ManagerNode) {
	p.managers = slices.Clone(managers)
	p.addrs = nil
	trusted := map[string]bool{}
	for _, m := range managers {
		p.addrs = append(p.addrs, m.GetAddr())
		if m.GetNodeId() == "" {
			// A manager too old to name its managers' nodes: nothing
			// to check against.
			trusted = nil
		} else if trusted != nil {
			trusted[m.GetNodeId()] = true
		}
	}
	if len(trusted) == 0 {
		trusted = nil
	}
	p.trustMu.Lock()
	p.trusted = trusted
	p.trustMu.Unlock()
}

// Verify is what the pool's connections check a manager's certificate
// with: the node it names must be a manager the pool trusts.
func (p *ManagerPool) Verify(id identity.Identity) error {
	if id.Role != identity.RoleManager {
		return fmt.Errorf("%s certificate of node %s: not a manager", id.Role, id.NodeID)
	}
	p.trustMu.Lock()
	defer p.trustMu.Unlock()
	if p.trusted == nil || p.trusted[id.NodeID] {
		return nil
	}
	return fmt.Errorf("node %s is not a manager of this cluster as the managers last said: its certificate is refused", id.NodeID)
}

// Conn implements Managers. A hint naming a manager that went silent
// lately is ignored: a follower may name a leader that is gone until the
// next election.
func (p *ManagerPool) Conn(ctx context.Context, hint string) (grpc.ClientConnInterface, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	addr := hint
	if addr != "" && p.silentLocked(addr, now) {
		addr = ""
	}
	if addr == "" {
		if len(p.addrs) == 0 {
			return nil, "", errors.New("no manager address known")
		}
		// The next manager in turn that has not gone silent, or the
		// next in turn if all have.
		addr = p.addrs[p.next%len(p.addrs)]
		for i := range len(p.addrs) {
			if a := p.addrs[(p.next+i)%len(p.addrs)]; !p.silentLocked(a, now) {
				addr = a
				p.next += i
				break
			}
		}
		p.next++
	}
	if c := p.conns[addr]; c != nil {
		return c, addr, nil
	}
	c, err := p.dial(addr, p.Verify)
	if err != nil {
		return nil, addr, err
	}
	p.conns[addr] = c
	return c, addr, nil
}

func (p *ManagerPool) silentLocked(addr string, now time.Time) bool {
	until, ok := p.silent[addr]
	if ok && !now.Before(until) {
		delete(p.silent, addr)
		return false
	}
	return ok
}

// Silent implements Managers: the connection is closed (it may look ready
// for minutes while nothing gets through) and redialled when next needed.
func (p *ManagerPool) Silent(addr string) {
	if addr == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silent[addr] = time.Now().Add(silentHold)
	if c := p.conns[addr]; c != nil {
		c.Close()
		delete(p.conns, addr)
	}
}

// Update implements Managers.
func (p *ManagerPool) Update(managers []*api.ManagerNode) {
	p.mu.Lock()
	changed := !slices.EqualFunc(p.managers, managers, func(a, b *api.ManagerNode) bool {
		return a.GetNodeId() == b.GetNodeId() && a.GetAddr() == b.GetAddr()
	})
	p.set(managers)
	for a, c := range p.conns {
		if !slices.Contains(p.addrs, a) {
			c.Close()
			delete(p.conns, a)
		}
	}
	p.mu.Unlock()
	if changed && p.onUpdate != nil {
		p.onUpdate(managers)
	}
}

// Vouch implements Managers: a manager the pool trusts named nodeID as the
// leader at addr.
func (p *ManagerPool) Vouch(nodeID, addr string) {
	if nodeID == "" {
		return
	}
	p.trustMu.Lock()
	defer p.trustMu.Unlock()
	if p.trusted != nil {
		p.trusted[nodeID] = true
	}
}

// Reset closes every connection; the next Conn dials afresh (after a
// certificate renewal, say).
func (p *ManagerPool) Reset() { p.Close() }

// Close closes every connection.
func (p *ManagerPool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		c.Close()
		delete(p.conns, a)
	}
}

// ManagerNodes is a manager list from addresses alone (a node file or an
// answer from before the managers' nodes were named).
func ManagerNodes(addrs []string) []*api.ManagerNode {
	out := make([]*api.ManagerNode, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, &api.ManagerNode{Addr: a})
	}
	return out
}
