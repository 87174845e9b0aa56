package worker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// silentHold is how long a manager that stopped answering is passed over:
// about the time a new leader takes to be elected and known, after which a
// manager that came back (or a network that healed) is tried again.
const silentHold = 5 * time.Second

// ManagerPool is the Managers of a node that reaches its managers over the
// network: it keeps one lazily dialled connection per manager, goes to the
// leader when a follower names it, and otherwise tries them in turn,
// passing over those that stopped answering.
type ManagerPool struct {
	dial     func(addr string) (*grpc.ClientConn, error)
	onUpdate func(addrs []string)

	mu    sync.Mutex
	addrs []string
	next  int
	conns map[string]*grpc.ClientConn
	// silent holds when each manager that stopped answering may be tried
	// again.
	silent map[string]time.Time
}

// NewManagerPool starts from addrs; onUpdate (optional) is told of new
// manager lists so they can be kept for the next start.
func NewManagerPool(addrs []string, dial func(addr string) (*grpc.ClientConn, error), onUpdate func([]string)) *ManagerPool {
	return &ManagerPool{dial: dial, onUpdate: onUpdate, addrs: slices.Clone(addrs), conns: map[string]*grpc.ClientConn{}, silent: map[string]time.Time{}}
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
	c, err := p.dial(addr)
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
