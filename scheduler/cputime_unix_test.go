//go:build unix

package scheduler

import (
	"syscall"
	"time"
)

// processCPU is the CPU time this process has used. Benchmarks report
// tasks per CPU second beside tasks per wall second because on a shared,
// busy machine wall time mostly measures the neighbours.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
