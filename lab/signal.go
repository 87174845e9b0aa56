package lab

import (
	"errors"
	"fmt"
	"syscall"
)

// PauseNode stops the node's shoald with SIGSTOP: it holds its sockets
// and its kernel still acknowledges TCP, but it answers nothing, as a
// process stuck in a long GC pause or on a frozen VM would. ResumeNode
// undoes it; a caller must resume every node it paused, also on failure.
func (l *Lab) PauseNode(name string) error { return l.signal(name, syscall.SIGSTOP) }

// ResumeNode continues a shoald stopped by PauseNode (SIGCONT). Resuming
// a node that runs is harmless.
func (l *Lab) ResumeNode(name string) error { return l.signal(name, syscall.SIGCONT) }

func (l *Lab) signal(name string, sig syscall.Signal) error {
	n, err := l.Node(name)
	if err != nil {
		return err
	}
	pids := l.pids(n)
	if len(pids) == 0 {
		return fmt.Errorf("send %v to shoald on %s: it does not run", sig, name)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("send %v to shoald on %s (pid %d): %w", sig, name, pid, err)
		}
	}
	return nil
}
