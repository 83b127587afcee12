package tunnel

import (
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tapWaits wakes the readers of TAP queues (the transmit loops) when their
// queue has a frame, from one epoll set of its own rather than Go's
// netpoller. Each queue is registered EPOLLONESHOT and re-armed only by its
// reader after a read found it empty, so a reader busy with a burst gets no
// wake-ups, and an idle one exactly one for the next frame. (In the
// netpoller, edge-triggered, every frame queued while the reader was busy
// woke whichever thread was blocked in epoll_wait, to find nobody waiting.)
// One goroutine serves every queue of the process: its thread stays
// blocked in epoll_wait, whatever the number of interfaces.
var tapWaits tapWaiter

type tapWaiter struct {
	once sync.Once
	epfd int
	err  syscall.Errno // from epoll_create1; then every arm fails with it

	mu   sync.Mutex
	byFD map[int32]*tapQueue // armed at least once and not closed
}

func (w *tapWaiter) start() {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		w.err = err.(syscall.Errno)
		return
	}
	w.epfd, w.byFD = fd, make(map[int32]*tapQueue)
	go w.run()
}

// arm asks for one wake-up of q's reader (a token on q.ready) as soon as q
// has a frame, also if it has one already. The caller holds q.mu shared,
// so q.fd is open.
func (w *tapWaiter) arm(q *tapQueue) syscall.Errno {
	w.once.Do(w.start)
	if w.err != 0 {
		return w.err
	}
	op := unix.EPOLL_CTL_MOD
	if !q.armed {
		// In the map before the ADD: the event may come before
		// EpollCtl returns.
		op = unix.EPOLL_CTL_ADD
		w.mu.Lock()
		w.byFD[q.fd] = q
		w.mu.Unlock()
	}
	q.ev = unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: q.fd}
	if err := unix.EpollCtl(w.epfd, op, int(q.fd), &q.ev); err != nil {
		if op == unix.EPOLL_CTL_ADD {
			// Not in the set, so forget will not look: the entry
			// would outlive q under a descriptor number reused later.
			w.mu.Lock()
			delete(w.byFD, q.fd)
			w.mu.Unlock()
		}
		return err.(syscall.Errno)
	}
	q.armed = true
	return 0
}

// forget takes q out of the set; the caller holds q.mu exclusively,
// before closing q.fd.
func (w *tapWaiter) forget(q *tapQueue) {
	if !q.armed {
		return
	}
	w.mu.Lock()
	if w.byFD[q.fd] == q {
		delete(w.byFD, q.fd)
	}
	w.mu.Unlock()
	_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(q.fd), nil)
	q.armed = false
}

func (w *tapWaiter) run() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err != nil {
			if err != unix.EINTR {
				// Not expected (EBADF, EFAULT, EINVAL): do not spin.
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		w.mu.Lock()
		for _, ev := range events[:n] {
			// A descriptor closed and reused since it was armed may
			// wake the new queue's reader once for nothing: it reads,
			// finds the queue empty and re-arms.
			if q := w.byFD[ev.Fd]; q != nil {
				select {
				case q.ready <- struct{}{}:
				default: // a wake-up is pending already
				}
			}
		}
		w.mu.Unlock()
	}
}
