// Package cputime reads the CPU time the benchmark programs report
// beside their counts, so that a figure per CPU-second is computed the
// same way in each.
package cputime

import (
	"time"

	"golang.org/x/sys/unix"
)

// Self returns the process's user plus system time so far, which includes
// what the kernel did in its system calls and, on a kernel without
// CONFIG_IRQ_TIME_ACCOUNTING (as the bench's VM), the softirq work it ran
// on their way out. It returns 0 if getrusage fails, which it does only
// for a bad argument.
func Self() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
