package tunnel

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The TAP side of decap: a TAP takes one frame per write(2), and writev
// gathers one frame, so the only way to hand the kernel many frames per
// system call is io_uring (Linux 5.6+, which has IORING_OP_WRITE): one
// write per frame, all submitted, and run inline, by one io_uring_enter.
// Measured with scripts/bench.sh against a write(2) per frame, it does not
// win on the kernel measured (README, Performance), so it is opt-in
// (erspand --io-uring, Linux.URing); where io_uring is missing or
// forbidden (older kernels, the kernel.io_uring_disabled sysctl, container
// seccomp profiles), frames are written one write(2) each even then.
//
// Only what that needs of io_uring is here: setup, the three mappings,
// submission of writes and reaping of their completions; no library on the
// Go module proxy this project may use offers it, and none is needed for
// a few dozen lines of ABI.

// The io_uring ABI (include/uapi/linux/io_uring.h).
const (
	ioringOffSQRing     = 0
	ioringOffCQRing     = 0x8000000
	ioringOffSQEs       = 0x10000000
	ioringFeatSingleMap = 1 << 0
	ioringFeatRWCurPos  = 1 << 3 // Linux 5.6, the release that brought IORING_OP_WRITE
	ioringEnterGetEvts  = 1 << 0
	ioringOpWrite       = 23
)

type ioSQRingOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type ioCQRingOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type ioUringParams struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  ioSQRingOffsets
	CQOff                                                                  ioCQRingOffsets
}

type ioUringSQE struct {
	Opcode      uint8
	Flags       uint8
	IOPrio      uint16
	Fd          int32
	Off         uint64
	Addr        uint64
	Len         uint32
	RWFlags     uint32
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	SpliceFdIn  int32
	Addr3       uint64
	Pad2        uint64
}

type ioUringCQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

// uring is one io_uring instance used by one goroutine at a time.
type uring struct {
	fd           int
	sqRing       []byte
	cqRing       []byte // aliases sqRing with IORING_FEAT_SINGLE_MMAP
	sqeMem       []byte
	sqHead       *uint32
	sqTail       *uint32
	sqMask       uint32
	sqArray      []uint32
	sqes         []ioUringSQE
	cqHead       *uint32
	cqTail       *uint32
	cqMask       uint32
	cqes         []ioUringCQE
	sqLen, cqLen int
}

// newURing sets up a ring of entries submission slots (a power of two).
func newURing(entries uint32) (*uring, error) {
	var p ioUringParams
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &uring{fd: int(fd)}
	fail := func(err error) (*uring, error) {
		r.close()
		return nil, err
	}
	// io_uring since 5.1, IORING_OP_WRITE only since 5.6: before, the
	// ring sets up and every write fails with EINVAL. No opcode probe
	// before 5.6 either; a feature flag of the same release tells.
	if p.Features&ioringFeatRWCurPos == 0 {
		return fail(fmt.Errorf("io_uring without IORING_OP_WRITE (Linux before 5.6): %w", unix.EOPNOTSUPP))
	}
	r.sqLen = int(p.SQOff.Array + p.SQEntries*4)
	r.cqLen = int(p.CQOff.CQEs + p.CQEntries*uint32(unsafe.Sizeof(ioUringCQE{})))
	single := p.Features&ioringFeatSingleMap != 0
	if single {
		r.sqLen = max(r.sqLen, r.cqLen)
	}
	var err error
	if r.sqRing, err = unix.Mmap(r.fd, ioringOffSQRing, r.sqLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fail(fmt.Errorf("io_uring: map the submission ring: %w", err))
	}
	r.cqRing = r.sqRing
	if !single {
		if r.cqRing, err = unix.Mmap(r.fd, ioringOffCQRing, r.cqLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
			return fail(fmt.Errorf("io_uring: map the completion ring: %w", err))
		}
	}
	sqeSize := int(unsafe.Sizeof(ioUringSQE{}))
	if r.sqeMem, err = unix.Mmap(r.fd, ioringOffSQEs, int(p.SQEntries)*sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fail(fmt.Errorf("io_uring: map the submission entries: %w", err))
	}
	u32 := func(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }
	r.sqHead, r.sqTail = u32(r.sqRing, p.SQOff.Head), u32(r.sqRing, p.SQOff.Tail)
	r.sqMask = *u32(r.sqRing, p.SQOff.RingMask)
	r.sqArray = unsafe.Slice(u32(r.sqRing, p.SQOff.Array), p.SQEntries)
	r.sqes = unsafe.Slice((*ioUringSQE)(unsafe.Pointer(&r.sqeMem[0])), p.SQEntries)
	r.cqHead, r.cqTail = u32(r.cqRing, p.CQOff.Head), u32(r.cqRing, p.CQOff.Tail)
	r.cqMask = *u32(r.cqRing, p.CQOff.RingMask)
	r.cqes = unsafe.Slice((*ioUringCQE)(unsafe.Pointer(&r.cqRing[p.CQOff.CQEs])), p.CQEntries)
	return r, nil
}

// writeAll writes bufs[i] to fds[i] for every i (at most the ring's size),
// each as one write(2) would, and puts each write's result in res[i]: the
// bytes written, or a negated errno. It returns an error only when the
// submission itself failed, res then meaningless.
func (r *uring) writeAll(fds []int32, bufs [][]byte, res []int32) error {
	n := len(bufs)
	tail := atomic.LoadUint32(r.sqTail)
	for i := 0; i < n; i++ {
		idx := (tail + uint32(i)) & r.sqMask
		r.sqes[idx] = ioUringSQE{
			Opcode:   ioringOpWrite,
			Fd:       fds[i],
			Off:      ^uint64(0), // the file position: a TAP has none
			Addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(bufs[i])))),
			Len:      uint32(len(bufs[i])),
			UserData: uint64(i),
		}
		r.sqArray[idx] = idx
	}
	atomic.StoreUint32(r.sqTail, tail+uint32(n))
	done := 0
	for toSubmit := n; done < n; {
		got, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(n-done), ioringEnterGetEvts, 0, 0)
		if errno != 0 && errno != unix.EINTR {
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
		if errno == 0 {
			toSubmit -= min(int(got), toSubmit) // what it consumed
		}
		// bufs stay referenced until here: the kernel reads them during
		// the call above (writes to a TAP complete inline), and a write
		// punted to a worker completes before it is reaped below.
		head := atomic.LoadUint32(r.cqHead)
		for ctail := atomic.LoadUint32(r.cqTail); head != ctail; head++ {
			c := &r.cqes[head&r.cqMask]
			if i := int(c.UserData); i < n {
				res[i] = c.Res
			}
			done++
		}
		atomic.StoreUint32(r.cqHead, head)
	}
	return nil
}

func (r *uring) close() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.cqRing != nil && len(r.sqRing) > 0 && &r.cqRing[0] != &r.sqRing[0] {
		unix.Munmap(r.cqRing)
	}
	if r.sqRing != nil {
		unix.Munmap(r.sqRing)
	}
	unix.Close(r.fd)
}

// tapWriter is the FrameWriter of a Linux host: frames for TAP queues
// collected, then written by one io_uring_enter, or one write(2) each
// without io_uring.
type tapWriter struct {
	ring   *uring // nil: write(2) per frame
	frames [][]byte
	fds    []int32
	res    []int32
	idx    []int32
	errs   []error
}

// tapBatches is held shared by every tapWriter's batch, from its first
// Add to the end of its Flush (or Close), and exclusively, for a moment,
// by a closing queue (waitWriters): the descriptor numbers taken at Add
// stay the TAPs' until they are written, with no lock taken per queue. A
// read lock per queue and batch was a locked add on a line of that queue:
// with the sessions of 1024 interfaces interleaved, one per frame, on a
// line nobody else had touched, which stalls the core for the whole
// cache miss (perf: 5% of erspand's CPU). A goroutine must not hold two
// writers' batches at once: with a Close waiting, the second would wait
// behind it, and it for the first.
var tapBatches sync.RWMutex

// waitWriters returns once no batch that began before the call is being
// written. A batch that begins while it waits (sync.RWMutex lets none in
// while a writer waits) or after it looks at the queue's closed flag,
// set before the call, only once it holds tapBatches.
func waitWriters() {
	tapBatches.Lock()
	//lint:ignore SA2001 an empty critical section: waiting is the point
	tapBatches.Unlock()
}

// NewFrameWriter returns a FrameWriter that takes up to batch frames per
// Flush: with l.URing (erspand --io-uring) on io_uring when the kernel
// allows it, otherwise one write(2) per frame.
func (l *Linux) NewFrameWriter(batch int) FrameWriter {
	w := &tapWriter{
		frames: make([][]byte, 0, batch),
		fds:    make([]int32, 0, batch),
		res:    make([]int32, batch),
		idx:    make([]int32, batch),
		errs:   make([]error, batch),
	}
	if l.URing {
		size := uint32(1)
		for size < uint32(batch) {
			size <<= 1
		}
		if r, err := newURing(size); err == nil {
			w.ring = r
		}
	}
	return w
}

// CheckURing reports why frame writers with l.URing would write with
// write(2) after all: nil when io_uring works here, else what setting it
// up failed with (ENOSYS or EOPNOTSUPP on old kernels, EPERM where
// kernel.io_uring_disabled or a seccomp profile forbids it).
func (l *Linux) CheckURing() error {
	r, err := newURing(1)
	if err != nil {
		return err
	}
	r.close()
	return nil
}

// URing reports whether w writes with io_uring.
func (w *tapWriter) URing() bool { return w.ring != nil }

func (w *tapWriter) Add(q Queue, frame []byte) bool {
	if len(w.frames) == cap(w.frames) {
		return false
	}
	if len(w.frames) == 0 {
		tapBatches.RLock()
	}
	// closed is read with tapBatches held, never before: a queue
	// closing in between would find no batch to wait for, close its
	// descriptor, and this batch would write to the number, perhaps
	// reused by then.
	// Every Queue of a Linux host is a *tapQueue; anything else gets -1,
	// as a closed queue does, and its frame fails with os.ErrClosed.
	fd := int32(-1)
	if tq, ok := q.(*tapQueue); ok && !tq.closed.Load() {
		fd = tq.fd
	}
	w.frames = append(w.frames, frame)
	w.fds = append(w.fds, fd)
	return true
}

func (w *tapWriter) Flush() []error {
	n := len(w.frames)
	errs := w.errs[:n]
	if w.ring != nil {
		w.flushRing(errs)
	} else {
		for i := range w.frames {
			errs[i] = w.write(i)
		}
	}
	w.release()
	return errs
}

// release forgets the queued frames and lets queues close again.
func (w *tapWriter) release() {
	if len(w.frames) > 0 {
		tapBatches.RUnlock()
	}
	clear(w.frames)
	w.frames, w.fds = w.frames[:0], w.fds[:0]
}

// write writes frame i with one write(2) on its descriptor
// (writeFrame); without one, its queue was closed.
func (w *tapWriter) write(i int) error {
	if fd := w.fds[i]; fd >= 0 {
		return writeFrame(fd, w.frames[i])
	}
	return os.ErrClosed
}

func (w *tapWriter) flushRing(errs []error) {
	// A frame without a descriptor (its queue closed, or not a
	// TAP of ours) fails as write would; the rest go in one submission,
	// in order.
	k := 0
	for i := range w.frames {
		if w.fds[i] < 0 {
			errs[i] = os.ErrClosed
			continue
		}
		// Compacted in place: slot k is frame idx[k].
		w.fds[k], w.frames[k], w.idx[k] = w.fds[i], w.frames[i], int32(i)
		k++
	}
	if k == 0 {
		return
	}
	orig := w.idx[:k]
	if err := w.ring.writeAll(w.fds[:k], w.frames[:k], w.res[:k]); err != nil {
		// The kernel may or may not have taken the queued entries, and
		// would read them at the next io_uring_enter, with buffers and
		// descriptors no longer held open: the ring is given up for good,
		// later batches go by write(2). This batch is counted as lost
		// (some frames may have been written: not written twice).
		w.ring.close()
		w.ring = nil
		for _, i := range orig {
			errs[i] = err
		}
		return
	}
	for j := 0; j < k; j++ {
		i, r := orig[j], w.res[j]
		switch {
		case r < 0:
			errs[i] = unix.Errno(-r)
		case int(r) != len(w.frames[j]):
			errs[i] = shortWrite(int(r), len(w.frames[j]))
		default:
			errs[i] = nil
		}
	}
}

// Close drops the frames added since the last Flush, unwritten, and
// releases the writer: a queue's Close must not wait for its batch.
func (w *tapWriter) Close() error {
	w.release()
	if w.ring != nil {
		w.ring.close()
		w.ring = nil
	}
	return nil
}
