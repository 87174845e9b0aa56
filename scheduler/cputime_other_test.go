//go:build !unix

package scheduler

import "time"

// processCPU is unknown here; the tasks/cpu-s metric is then left out.
func processCPU() time.Duration { return 0 }
