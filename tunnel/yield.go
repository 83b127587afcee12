package tunnel

import "runtime"

// yielder makes a data-path loop (receive, transmit) yield to Go's
// scheduler every yieldEvery batches. Go's sysmon preempts a goroutine
// that has not been descheduled for 10 ms; a loop that is busy, or blocked
// in its own syscalls, never is, and each such preemption also takes its P
// away, after which sysmon wakes every 20 µs for a millisecond: 5% of
// erspand's CPU at full load pinned to one core (perf), and a context
// switch each time on that core. A yield (~0.2 µs) now and then keeps
// sysmon asleep.
type yielder int

// yieldEvery batches (of up to --rx-batch packets, 64 by default, or 64
// frames on transmit): a yield every few milliseconds at full load.
const yieldEvery = 16

// batch counts one batch and yields when it is time.
func (y *yielder) batch() {
	if *y++; *y >= yieldEvery {
		*y = 0
		runtime.Gosched()
	}
}
