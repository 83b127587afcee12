package tunnel

import (
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchConn is GRESocket's receive half: one socket read with recvmmsg(2)
// into preallocated message arrays, by one goroutine at a time, with
// interrupt moderation. (CaptureSocket's and the eBPF ring's readers wait
// the same way: pollFD.)
//
// It does not use Go's netpoller. A reader that parks in the netpoller
// pays, per wake-up, an epoll_pwait, a goroutine switch and (with one P, as
// on a pinned daemon) the runtime's sysmon waking every 20 µs; measured at
// 64-byte frames that was a third of erspand's CPU per frame. Instead the
// reading goroutine blocks in the kernel itself: in ppoll(2) when the
// socket is empty, and, after a read that emptied it, in a short sleep
// (the moderation delay) before the next read, so that the next read finds
// a batch rather than one packet. That is what a NIC's rx-usecs does for
// its interrupts; mirrored traffic tolerates the added latency (frames are
// timestamped when they enter the TAP, at most the delay plus the kernel's
// timer slack, 50 µs by default, later). The socket buffer absorbs what
// arrives meanwhile. The price is one OS thread per receive socket (one per
// namespace and address family, and per sensor NIC's ring) while it waits.
type batchConn struct {
	pollFD
	moderation

	hdrs    []unix.Mmsghdr
	iovs    []unix.Iovec
	bufs    []byte // batch * bufSize
	oob     []byte // batch * oobSize
	bufSize int
	oobSize int
	nameLen uint32 // bytes of the sockaddr each message's Name points to
}

// moderation is the interrupt moderation of a reader that looks for
// packets itself (batchConn, greRing): after a read that emptied the
// queue, a sleep before the next, so that it finds a batch.
type moderation struct {
	moderate time.Duration // the moderation delay; 0: none
	drained  bool          // the previous read emptied the queue
}

// pause sleeps the moderation delay if the previous read emptied the
// queue.
func (m *moderation) pause() {
	if m.drained && m.moderate > 0 {
		// A signal (Go's runtime sends its threads some) ends nanosleep
		// early with what was left in ts: sleep that too, or the read
		// would come before its batch had time to gather.
		ts := unix.NsecToTimespec(int64(m.moderate))
		for unix.Nanosleep(&ts, &ts) == unix.EINTR {
		}
	}
}

// pollFD is a receive socket read by one goroutine that waits for it in
// ppoll(2), beside an eventfd that close makes readable: what batchConn,
// ring and greRing share.
type pollFD struct {
	fd   int
	wake int // eventfd: close makes it readable to end a pending ppoll
	// fdmu is held shared by the reader across its system calls on fd
	// (and the ring's use of its memory) and by control; close takes it
	// exclusively before closing fd, so that no system call ever runs on
	// a closed (and perhaps reused) descriptor.
	fdmu   sync.RWMutex
	closed atomic.Bool
	poll   [2]unix.PollFd
}

// init takes over fd; on error fd is left to the caller.
func (p *pollFD) init(fd int) error {
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return err
	}
	p.fd, p.wake = fd, wake
	p.poll[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	p.poll[1] = unix.PollFd{Fd: int32(wake), Events: unix.POLLIN}
	return nil
}

// wait blocks until fd is readable or close was called (fdmu held
// shared). An interrupted wait returns nil: the caller looks again. A
// pending socket error (ENETDOWN when a packet socket's link goes down)
// is returned, and so cleared: poll reports POLLERR for as long as it is
// pending, and a reader that never reads it (a ring's) would spin.
func (p *pollFD) wait() error {
	_, _, errno := unix.Syscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&p.poll[0])), 2, 0, 0, 0, 0)
	if errno != 0 && errno != unix.EINTR {
		return errno
	}
	if p.poll[0].Revents&unix.POLLERR != 0 {
		if e, err := unix.GetsockoptInt(p.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil {
			return err
		} else if e != 0 {
			return unix.Errno(e)
		}
	}
	return nil
}

// control runs f on the socket's descriptor unless the socket is closed,
// and reports whether it ran.
func (p *pollFD) control(f func(fd int)) bool {
	p.fdmu.RLock()
	defer p.fdmu.RUnlock()
	if p.closed.Load() {
		return false
	}
	f(p.fd)
	return true
}

// close wakes a pending wait, waits for the reader to leave its system
// calls, runs locked (if not nil) with fdmu held exclusively, then closes
// the socket. A second close returns net.ErrClosed.
func (p *pollFD) close(locked func()) error {
	if p.closed.Swap(true) {
		return net.ErrClosed
	}
	one := [8]byte{1} // an eventfd adds the native-endian uint64 written
	_, _ = unix.Write(p.wake, one[:])
	p.fdmu.Lock()
	defer p.fdmu.Unlock()
	if locked != nil {
		locked()
	}
	unix.Close(p.wake)
	return unix.Close(p.fd)
}

// MaxSockBuf is the largest socket buffer a socket is opened with: the
// kernel doubles the value (for its bookkeeping) in an int, which kernels
// before 5.3 did without clamping it, so that a larger one overflowed into
// a minimal or negative buffer.
const MaxSockBuf = math.MaxInt32 / 2

// CheckBatch checks a receive batch (messages per recvmmsg, or per
// ReadBatch from a ring): 1 to MaxBatch. The error wraps EINVAL and says
// the range.
func CheckBatch(n int) error {
	if n < 1 || n > MaxBatch {
		return fmt.Errorf("want 1 to %d: %w", MaxBatch, unix.EINVAL)
	}
	return nil
}

// CheckSockBuf checks a socket buffer size: 0 (the kernel's default) to
// MaxSockBuf bytes. The error wraps EINVAL and says the range.
func CheckSockBuf(n int) error {
	if n < 0 || n > MaxSockBuf {
		return fmt.Errorf("want 0 (the kernel's default) to %d bytes: %w", MaxSockBuf, unix.EINVAL)
	}
	return nil
}

// checkBatchArgs checks the sizes a receive socket is opened with: batch
// (CheckBatch) messages of at least 64 bytes, rcvbuf (CheckSockBuf).
func checkBatchArgs(batch, bufSize, rcvbuf int) error {
	if CheckBatch(batch) != nil || bufSize < 64 || CheckSockBuf(rcvbuf) != nil {
		return fmt.Errorf("batch %d, buffer %d, rcvbuf %d: %w", batch, bufSize, rcvbuf, unix.EINVAL)
	}
	return nil
}

// newBatchConn takes over raw GRE socket fd for batches of batch
// messages of up to bufSize bytes, each with oobSize (> 0) bytes of
// control messages; message i's source address goes to names[i] when
// names is not nil (IPv6: the IPv4 header carries it otherwise). On error
// fd is left open.
func newBatchConn(fd, batch, bufSize, oobSize int, names []unix.RawSockaddrInet6, moderate time.Duration) (*batchConn, error) {
	c := &batchConn{
		moderation: moderation{moderate: moderate},
		hdrs:       make([]unix.Mmsghdr, batch),
		iovs:       make([]unix.Iovec, batch),
		bufs:       make([]byte, batch*bufSize),
		oob:        make([]byte, batch*oobSize),
		bufSize:    bufSize, oobSize: oobSize,
	}
	if names != nil {
		c.nameLen = unix.SizeofSockaddrInet6
	}
	for i := range c.hdrs {
		c.iovs[i].Base = &c.bufs[i*bufSize]
		c.iovs[i].SetLen(bufSize)
		h := &c.hdrs[i].Hdr
		h.Iov, h.Iovlen = &c.iovs[i], 1
		h.Control = &c.oob[i*oobSize]
		if names != nil {
			h.Name = (*byte)(unsafe.Pointer(&names[i]))
		}
	}
	if err := c.init(fd); err != nil {
		return nil, err
	}
	return c, nil
}

// read waits until at least one message is there and reads up to a batch
// of them; it returns how many. Message i is then in buf(i), its length
// and flags in c.hdrs[i], its control messages in oob(i). After close it
// returns net.ErrClosed; other errors are the errno of recvmmsg, ppoll or
// a pending socket error (pollFD.wait). It does not allocate. Only one
// goroutine may call it at a time.
func (c *batchConn) read() (int, error) {
	c.fdmu.RLock()
	defer c.fdmu.RUnlock()
	for {
		if c.closed.Load() {
			return 0, net.ErrClosed
		}
		c.pause()
		for i := range c.hdrs {
			// The kernel overwrites these with what it returned.
			h := &c.hdrs[i]
			h.Len = 0
			h.Hdr.Flags = 0
			h.Hdr.SetControllen(c.oobSize)
			h.Hdr.Namelen = c.nameLen
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(c.fd),
			uintptr(unsafe.Pointer(&c.hdrs[0])), uintptr(len(c.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			if c.closed.Load() {
				return 0, net.ErrClosed
			}
			c.drained = int(n) < len(c.hdrs)
			return int(n), nil
		case unix.EINTR:
		case unix.EAGAIN:
			// Empty: wait in the kernel for a packet or for close.
			c.drained = false
			if err := c.wait(); err != nil {
				return 0, err
			}
		default:
			return 0, errno
		}
	}
}

// buf returns message i of the last read.
func (c *batchConn) buf(i int) []byte {
	return c.bufs[i*c.bufSize : i*c.bufSize+int(c.hdrs[i].Len)]
}

// oobOf returns the control messages of message i of the last read.
func (c *batchConn) oobOf(i int) []byte {
	return c.oob[i*c.oobSize : i*c.oobSize+min(int(c.hdrs[i].Hdr.Controllen), c.oobSize)]
}
