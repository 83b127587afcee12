package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// memSystem is an in-memory System: TAP queues record the frames written
// to them, sockets deliver the batches a test injects.
type memSystem struct {
	mu      sync.Mutex
	links   map[string]*memLink
	socks   map[recvKey]*memSocket
	senders []*memSender
	moves   int
	spans   int             // span ports in place
	foreign map[string]bool // links that exist but are not ours
	// deleteErr, when set, is what DeleteTAP fails with.
	deleteErr error
	// ringErr, when set, is every GRE socket's RingError.
	ringErr error
	next    int
}

type memLink struct {
	up, monitor bool
	queue       *memQueue
}

func newMemSystem() *memSystem {
	return &memSystem{links: map[string]*memLink{}, socks: map[recvKey]*memSocket{}, foreign: map[string]bool{}, next: 10}
}

func (m *memSystem) CreateTAP(_, name string, mac net.HardwareAddr, mtu int) (Link, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.foreign[name] {
		return Link{}, false, fmt.Errorf("link %s: %w", name, unix.EEXIST)
	}
	m.next++
	m.links[name] = &memLink{}
	return Link{Index: m.next, Name: name, MAC: mac, MTU: mtu}, false, nil
}

func (m *memSystem) DeleteTAP(_, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.deleteErr != nil {
		return m.deleteErr
	}
	if m.links[name] == nil {
		return fmt.Errorf("no link %s: %w", name, unix.ENXIO) // as DeleteTAP
	}
	delete(m.links, name)
	return nil
}

func (m *memSystem) SetLinkUp(_, name string, up bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.links[name].up = up
	return nil
}

func (m *memSystem) SetMonitor(_, name string, on bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.links[name].monitor = on
	return nil
}

func (m *memSystem) OpenQueue(_, name string) (Queue, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	q := newMemQueue()
	m.links[name].queue = q
	return q, nil
}

func (m *memSystem) NewFrameWriter(batch int) FrameWriter {
	return &memWriter{errs: make([]error, 0, batch), max: batch}
}

// memWriter writes each frame as it is flushed, one Write each.
type memWriter struct {
	queues []Queue
	frames [][]byte
	errs   []error
	max    int
}

func (w *memWriter) Add(q Queue, frame []byte) bool {
	if len(w.frames) == w.max {
		return false
	}
	w.queues, w.frames = append(w.queues, q), append(w.frames, frame)
	return true
}

func (w *memWriter) Flush() []error {
	w.errs = w.errs[:0]
	for i, f := range w.frames {
		_, err := w.queues[i].(*memQueue).Write(f)
		if errors.Is(err, net.ErrClosed) {
			err = os.ErrClosed // FrameWriter's contract, as tapWriter's
		}
		w.errs = append(w.errs, err)
	}
	w.queues, w.frames = w.queues[:0], w.frames[:0]
	return w.errs
}

// Close drops the frames added since the last Flush, unwritten.
func (w *memWriter) Close() error {
	clear(w.frames)
	w.queues, w.frames = w.queues[:0], w.frames[:0]
	return nil
}

func (m *memSystem) SetLinkAttrs(_, name string, mtu int, mac net.HardwareAddr) error {
	return nil
}

func (m *memSystem) MoveTAP(name, from, to string) (Link, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.links[name].up, m.links[name].monitor = false, false
	m.moves++
	return Link{Index: 99, Name: name}, nil
}

func (m *memSystem) ListenGRE(ns string, family int) (Socket, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &memSocket{in: make(chan []Message), errs: make(chan error), closed: make(chan struct{}), ringErr: m.ringErr}
	m.socks[recvKey{ns: ns, family: family}] = s
	return s, nil
}

func (m *memSystem) ListenCapture(ns, dev string) (Socket, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &memSocket{in: make(chan []Message), errs: make(chan error), closed: make(chan struct{})}
	m.socks[recvKey{ns: ns, dev: dev}] = s
	return s, nil
}

func (m *memSystem) OpenSender(ns string, src, dst netip.Addr, ttl int, df bool) (Sender, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &memSender{ttl: ttl, df: df, src: src, dst: dst, ns: ns}
	m.senders = append(m.senders, s)
	return s, nil
}

func (m *memSystem) CheckNamespace(string) error { return nil }

func (m *memSystem) CheckDevice(ns, dev string) error { return nil }

func (m *memSystem) AddSpan(ns, bridge, tap string, tapIndex int, _ func(error)) (func() error, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.spans++
	return func() error {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.spans--
		return nil
	}, nil
}

func (m *memSystem) socket(family int) *memSocket { return m.socketIn("", family) }

func (m *memSystem) socketIn(ns string, family int) *memSocket {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.socks[recvKey{ns: ns, family: family}]
}

// memSender records what was sent.
type memSender struct {
	mu       sync.Mutex
	src, dst netip.Addr
	ns       string
	ttl      int
	df       bool
	tooBig   int // packets longer than this fail with EMSGSIZE (0: none)
	pkts     [][]byte
	tos      []uint8
	closed   bool
}

func (s *memSender) SendBatch(pkts [][]byte, tos []uint8) (sent, tooBig int, bytes uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, pkt := range pkts {
		switch {
		case s.closed:
			err = net.ErrClosed
		case s.tooBig > 0 && len(pkt) > s.tooBig:
			tooBig++
		default:
			s.pkts = append(s.pkts, append([]byte(nil), pkt...))
			s.tos = append(s.tos, tos[i])
			sent++
			bytes += uint64(len(pkt))
		}
	}
	return sent, tooBig, bytes, err
}

func (s *memSender) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func (m *memSystem) queue(name string) *memQueue {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.links[name].queue
}

type memQueue struct {
	mu     sync.Mutex
	frames [][]byte
	count  int
	keep   bool // record frames (off for allocation tests)
	closed bool
	// writeErr, when set, is what every Write fails with (a TAP removed
	// under erspand: EBADFD).
	writeErr error
	out      chan []byte   // frames the "kernel" sends out of the TAP
	done     chan struct{} // closed by Close
	fail     chan error    // an error the next Read returns
}

func newMemQueue() *memQueue {
	return &memQueue{out: make(chan []byte), done: make(chan struct{}), fail: make(chan error)}
}

// Read hands out the frames a test sends with send.
func (q *memQueue) Read(b []byte) (int, error) {
	select {
	case f := <-q.out:
		return copy(b, f), nil
	case err := <-q.fail:
		return 0, err
	case <-q.done:
		return 0, net.ErrClosed
	}
}

// ReadBatch hands out one frame per call: enough for the transmit loop.
func (q *memQueue) ReadBatch(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := q.Read(bufs[0][offset:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}

// send makes the TAP emit f, as the kernel does for frames leaving erspanN.
func (q *memQueue) send(f []byte) { q.out <- f }

func (q *memQueue) Write(b []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, net.ErrClosed
	}
	if q.writeErr != nil {
		return 0, q.writeErr
	}
	q.count++
	if q.keep {
		q.frames = append(q.frames, append([]byte(nil), b...))
	}
	return len(b), nil
}

func (q *memQueue) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.done)
	}
	return nil
}

func (q *memQueue) take() [][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	f := q.frames
	q.frames = nil
	return f
}

// memSocket hands the receiver one injected batch per ReadBatch. inject
// returns once the receiver has taken the batch and asked for the next one,
// i.e. once the batch has been processed.
type memSocket struct {
	in     chan []Message
	errs   chan error // what ReadBatch fails with, one read each
	closed chan struct{}
	once   sync.Once
	drops  uint64
	// ringErr is what RingError returns, as a GRESocket whose eBPF ring
	// the kernel refused.
	ringErr error
}

func (s *memSocket) RingError() error { return s.ringErr }

func (s *memSocket) ReadBatch() ([]Message, error) {
	select {
	case b := <-s.in:
		return b, nil
	case err := <-s.errs:
		return nil, err
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

func (s *memSocket) KernelDrops() uint64 { return s.drops }

func (s *memSocket) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

func (s *memSocket) inject(msgs ...Message) {
	s.in <- msgs
	// An empty batch as a barrier: when it is taken, the previous one is done.
	s.in <- nil
}
