// Command ceiling measures the most a Go program can deliver into a TAP on
// this machine: prebuilt frames, one write() each, in a loop, for a fixed
// time. It is the yardstick for erspand's decap: the same kind of TAP
// (multi-queue, no packet info), in the same monitor conditions (up, with
// the product's own drop-everything eBPF filter at tc ingress, IPv6 off),
// so the kernel does the same little after each write. It prints frames,
// seconds and its own CPU seconds as key=value.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/scripts/bench/internal/cputime"
	"github.com/erspan-linux/erspan/scripts/bench/internal/frame"
	"github.com/erspan-linux/erspan/tunnel"
)

func main() {
	name := flag.String("name", "bench0", "TAP to create (in the current network namespace)")
	size := flag.Int("size", 64, "frame size in bytes (no FCS)")
	dur := flag.Duration("duration", 3*time.Second, "how long to write")
	uring := flag.Int("uring", 0, "write batches of this many frames with one io_uring_enter (erspand's FrameWriter) rather than one write() each")
	queues := flag.Int("queues", 1, "open this many queues of the TAP and write into each from its own thread (its own flows), one write() per frame")
	flag.Parse()
	// At most 12 queues: queue q writes frames q<<12 to q<<12 + 4095,
	// and frame.Build's UDP source port repeats after index 50000, so a
	// 13th queue would write flows of the first.
	if *queues < 1 || *queues > 12 || (*queues > 1 && *uring != 0) {
		fmt.Fprintln(os.Stderr, "ceiling: -queues takes 1 to 12, and more than 1 only with write()")
		os.Exit(2)
	}
	if err := run(*name, *size, *dur, *uring, *queues); err != nil {
		fmt.Fprintln(os.Stderr, "ceiling:", err)
		os.Exit(1)
	}
}

func run(name string, size int, dur time.Duration, uring, queues int) error {
	if size < frame.Min || size > frame.Max || dur <= 0 || dur > time.Minute {
		return fmt.Errorf("size %d or duration %v out of range", size, dur)
	}
	var (
		fds []int
		w   tunnel.FrameWriter
		q   tunnel.Queue
		err error
	)
	if uring == 0 {
		// The flags of an erspanN TAP (tunnel/tap_linux.go): a
		// multi-queue TAP takes a slightly different path in the kernel
		// than a plain one. The TAP goes away with its last queue's fd
		// (not persistent). With more than one queue the kernel also
		// hashes every frame written and records its flow's queue
		// (tun_flow_update): that cost is part of what -queues
		// measures. Each queue writes flows of its own (below), as a
		// writer spreading flows over queues would: were the same flows
		// written on every queue, each entry would be rewritten back
		// and forth, a cost no real writer pays.
		for range queues {
			fd, err := openQueue(name)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			fds = append(fds, fd)
		}
	} else {
		// erspand's own TAP, queue and io_uring writer. One queue only,
		// as erspand has.
		if _, _, err := tunnel.CreateTAP(name, nil, 0); err != nil {
			return err
		}
		defer tunnel.DeleteTAP(name)
		if q, err = tunnel.OpenQueue(name); err != nil {
			return err
		}
		defer q.Close()
		l := &tunnel.Linux{URing: true}
		if err := l.CheckURing(); err != nil {
			return fmt.Errorf("io_uring is not available: %w", err)
		}
		w = l.NewFrameWriter(uring)
		defer w.Close()
	}
	if err := tunnel.SetLinkUp(name, true); err != nil {
		return err
	}
	if err := tunnel.SetMonitor(name, true); err != nil {
		return err
	}

	// 4096 frames per queue, distinct flows on each: Build's index sets
	// the UDP source port (the flow hash's part that varies), so queue q
	// takes indexes q<<12 to q<<12 + 4095.
	frames := make([][][]byte, queues)
	for qi := range frames {
		frames[qi] = make([][]byte, 4096)
		for i := range frames[qi] {
			frames[qi][i] = frame.Build(size, qi<<12|i)
		}
	}
	before := cputime.Self()
	start := time.Now()
	deadline := start.Add(dur)
	var n, errs int64
	if w != nil {
		n, errs = uringLoop(w, q, uring, frames[0], deadline)
	} else {
		// A writer per queue, each on its own thread, as a multi-queue
		// TAP is meant to be used; with one queue, this goroutine alone.
		var (
			wg sync.WaitGroup
			mu sync.Mutex
		)
		for qi, fd := range fds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				k, e := writeLoop(fd, frames[qi], deadline)
				mu.Lock()
				n, errs = n+k, errs+e
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	elapsed := time.Since(start).Seconds()
	used := (cputime.Self() - before).Seconds()
	fmt.Printf("frames=%d elapsed=%.6f cpu=%.6f pps=%.0f per_cpu_s=%.0f errors=%d queues=%d\n",
		n, elapsed, used, float64(n)/elapsed, float64(n)/used, errs, queues)
	return nil
}

// openQueue opens one queue of the multi-queue TAP name, making it with
// the first.
func openQueue(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE)
		if err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			err = fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// writeLoop writes frames into fd, one write() each, until deadline, and
// returns the frames written and the writes refused. It looks at the
// clock every 256 writes: cheap next to 256 syscalls.
func writeLoop(fd int, frames [][]byte, deadline time.Time) (n, errs int64) {
	for i := 0; ; i++ {
		if i&255 == 0 && time.Now().After(deadline) {
			return n, errs
		}
		if _, err := unix.Write(fd, frames[i&4095]); err != nil {
			errs++
			continue
		}
		n++
	}
}

// uringLoop writes frames into q through w, batch at a time, until
// deadline, and returns the frames written and the writes refused.
func uringLoop(w tunnel.FrameWriter, q tunnel.Queue, batch int, frames [][]byte, deadline time.Time) (n, errs int64) {
	for i := 0; ; i++ {
		if i&255 == 0 && time.Now().After(deadline) {
			return n, errs
		}
		w.Add(q, frames[i&4095])
		if (i+1)%batch != 0 {
			continue
		}
		for _, err := range w.Flush() {
			if err != nil {
				errs++
			} else {
				n++
			}
		}
	}
}
