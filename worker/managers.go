package worker

import (
	"context"
	"errors"
	"slices"
	"sync"

	"google.golang.org/grpc"
)

// ManagerPool is the Managers of a node that reaches its managers over the
// network: it keeps one lazily dialled connection per manager, goes to the
// leader when a follower names it, and otherwise tries them in turn.
type ManagerPool struct {
	dial     func(addr string) (*grpc.ClientConn, error)
	onUpdate func(addrs []string)

	mu    sync.Mutex
	addrs []string
	next  int
	conns map[string]*grpc.ClientConn
}

// NewManagerPool starts from addrs; onUpdate (optional) is told of new
// manager lists so they can be kept for the next start.
func NewManagerPool(addrs []string, dial func(addr string) (*grpc.ClientConn, error), onUpdate func([]string)) *ManagerPool {
	return &ManagerPool{dial: dial, onUpdate: onUpdate, addrs: slices.Clone(addrs), conns: map[string]*grpc.ClientConn{}}
}

// Conn implements Managers.
func (p *ManagerPool) Conn(ctx context.Context, hint string) (grpc.ClientConnInterface, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	addr := hint
	if addr == "" {
		if len(p.addrs) == 0 {
			return nil, "", errors.New("no manager address known")
		}
		addr = p.addrs[p.next%len(p.addrs)]
		p.next++
	}
	if c := p.conns[addr]; c != nil {
		return c, addr, nil
	}
	c, err := p.dial(addr)
	if err != nil {
		return nil, addr, err
	}
	p.conns[addr] = c
	return c, addr, nil
}

// Update implements Managers.
func (p *ManagerPool) Update(addrs []string) {
	p.mu.Lock()
	changed := !slices.Equal(p.addrs, addrs)
	p.addrs = slices.Clone(addrs)
	for a, c := range p.conns {
		if !slices.Contains(addrs, a) {
			c.Close()
			delete(p.conns, a)
		}
	}
	p.mu.Unlock()
	if changed && p.onUpdate != nil {
		p.onUpdate(addrs)
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
