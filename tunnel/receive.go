package tunnel

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/erspan-linux/erspan/erspan"
)

// receiver runs the receive path of one socket: socket -> erspan.Decode ->
// demux -> TAP. The frames of a batch are written into their TAPs
// together, after the batch is decoded (FrameWriter): they alias the
// socket's buffers, which stay untouched until the next ReadBatch.
type receiver struct {
	h     *Host
	sock  Socket
	out   FrameWriter
	outIf []queued                   // what each frame queued on out is
	table atomic.Pointer[demuxTable] // for this socket's namespace
	done  chan struct{}
	pkt   erspan.Packet // scratch, reused per packet
	cur   run
	// pair is the exact tunnels of the last packet's address pair in the
	// batch's table: runs change with the session, the pair mostly not.
	// Forgotten with the batch, as the run is (handle), so that the next
	// batch, which may come with another table, looks it up there, and no
	// table outlives its batch here.
	pair struct {
		valid  bool
		addrs  addrPair
		routes sessionRoutes
	}
	// stats are this receiver's share of the daemon-wide counters: one
	// writer, no cache line shared with the other receivers; summed when
	// read (Host.DaemonCounters).
	stats daemonStats
}

func newReceiver(h *Host, s Socket) *receiver {
	r := &receiver{h: h, sock: s, out: h.sys.NewFrameWriter(rxWriteBatch),
		outIf: make([]queued, 0, rxWriteBatch), done: make(chan struct{})}
	r.table.Store(&demuxTable{})
	return r
}

// run is the receiver's current run of packets with the same addresses
// and session within one batch: what a batch usually is (one switch's one
// mirror session). The demux and flow tables are consulted once per run,
// and the run's counts are added to the flow's, the interface's and the
// receiver's atomics once, when the run ends. Of these only the
// receiver's (daemon-wide) counters are per goroutine, summed when read;
// an interface's and a flow's are shared atomics, written once per run
// by whichever receiver took it.
type run struct {
	valid         bool // a run has begun
	local, remote netip.Addr
	session       int32
	route         *route // nil: no interface takes the run
	flow          *flow  // nil: beyond maxFlows, counted in overflow

	packets, bytes         uint64 // taken by route's interface
	typeI, typeII, typeIII uint64
	truncated, captureOnly uint64 // IfCounters.RxTruncated, RxCaptureOnly
	frameType, innerShort  uint64 // IfCounters.RxFrameType, RxInnerShort
	unmatched              uint64 // when route is nil
}

// lookup returns the route for a packet of session from m.Src to m.Dst, from
// the current run when the packet continues it.
func (r *receiver) lookup(t *demuxTable, m *Message, session int32) *route {
	c := &r.cur
	if c.valid && c.session == session && c.local == m.Dst && c.remote == m.Src {
		return c.route
	}
	r.endRun()
	c.valid, c.local, c.remote, c.session = true, m.Dst, m.Src, session
	p := &r.pair
	if a := (addrPair{m.Dst, m.Src}); !p.valid || p.addrs != a {
		p.valid, p.addrs, p.routes = true, a, t.exact[a]
	}
	c.route = t.lookup(p.routes, m.Dst, session)
	if c.route != nil {
		c.flow = c.route.flowFor(flowKey{src: m.Src, session: session})
	}
	return c.route
}

// count records a packet of the run of n bytes after its ERSPAN header.
// Loss tracking needs every sequence number in order, so it is per packet.
func (r *receiver) count(p *erspan.Packet, n int) {
	c := &r.cur
	c.packets++
	c.bytes += uint64(n)
	if p.HasSeq && c.flow != nil {
		c.flow.sequence(p.Seq)
	}
}

// endRun adds the run's counts to the flow and the interface and forgets
// it. handle ends the last run of every batch, so a run never outlives
// its batch's demux table, nor keeps an interface alive.
func (r *receiver) endRun() {
	c := &r.cur
	if c.unmatched > 0 {
		r.stats.unmatched.Add(c.unmatched)
	}
	if c.packets > 0 {
		if c.flow != nil {
			c.flow.packets.Add(c.packets)
			c.flow.bytes.Add(c.bytes)
			c.flow.publish()
		} else {
			c.route.ifc.flows.overflow.Add(c.packets)
		}
		s := &c.route.ifc.stats
		for _, n := range [...]struct {
			c *atomic.Uint64
			n uint64
		}{{&s.typeI, c.typeI}, {&s.typeII, c.typeII}, {&s.typeIII, c.typeIII},
			{&s.rxTruncated, c.truncated}, {&s.rxCaptureOnly, c.captureOnly},
			{&s.rxFrameType, c.frameType}, {&s.rxInnerShort, c.innerShort}} {
			if n.n > 0 {
				n.c.Add(n.n)
			}
		}
	}
	*c = run{}
}

type queued struct {
	ifc *iface
	len int
}

// rxWriteBatch is the most frames written into TAPs per FrameWriter
// flush; a longer socket batch is written in several.
const rxWriteBatch = 256

func (r *receiver) run() {
	defer close(r.done)
	defer r.out.Close()
	var backoff time.Duration
	var y yielder
	var errs errLog
	for {
		y.batch()
		msgs, err := r.sock.ReadBatch()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Back off on repeated errors rather than spin: 1 ms
			// after the first, doubling up to 100 ms.
			backoff = min(max(backoff*2, time.Millisecond), 100*time.Millisecond)
			if ok, more := errs.should(err, time.Now()); ok {
				r.h.log.errorf("GRE receive: %v%s", err, more)
			}
			time.Sleep(backoff)
			continue
		}
		if more, ok := errs.fine(time.Now); ok {
			r.h.log.errorf("GRE receive works again%s", more)
		}
		backoff = 0
		r.handle(r.table.Load(), msgs)
	}
}

// handle takes a batch of packets through decode and demux into their
// TAPs. It allocates nothing.
func (r *receiver) handle(t *demuxTable, msgs []Message) {
	// Per batch, not per packet: the receiver's own counter and the
	// sysctl, which changes rarely.
	r.stats.rxPackets.Add(uint64(len(msgs)))
	if r.h.deny.Load() {
		r.stats.disallowed.Add(uint64(len(msgs)))
		return
	}
	for i := range msgs {
		ifc := r.input(t, &msgs[i])
		if ifc == nil {
			continue
		}
		if !r.out.Add(ifc.queue, r.pkt.Frame) {
			// The writer is full (a socket batch longer than
			// rxWriteBatch): the run so far, this packet included, is
			// counted and written (flush), then this packet queued.
			r.flush()
			r.out.Add(ifc.queue, r.pkt.Frame)
		}
		r.outIf = append(r.outIf, queued{ifc, len(r.pkt.Frame)})
	}
	r.flush()
	r.pair.valid, r.pair.routes = false, nil
}

// flush ends the current run, then writes the queued frames and counts
// them on their interfaces, one addition per run of frames for the same
// interface (usually the batch). The run's counts (types, flows, drops)
// go in before its frames are written, so that whoever sees a frame on a
// TAP finds them counted; rx_packets and rx_bytes count what the writes
// took, after them.
func (r *receiver) flush() {
	r.endRun()
	if len(r.outIf) == 0 {
		return
	}
	var (
		cur                    *iface
		packets, bytes, failed uint64
	)
	add := func() {
		if cur != nil && packets > 0 {
			cur.stats.rxPackets.Add(packets)
			cur.stats.rxBytes.Add(bytes)
		}
		if cur != nil && failed > 0 {
			cur.stats.rxErrors.Add(failed)
		}
	}
	for i, err := range r.out.Flush() {
		q := &r.outIf[i]
		if q.ifc != cur {
			add()
			cur, packets, bytes, failed = q.ifc, 0, 0, 0
		}
		if err != nil {
			failed++
			continue
		}
		packets++
		bytes += uint64(q.len)
	}
	add()
	clear(r.outIf)
	r.outIf = r.outIf[:0]
}

// input takes one packet through decode (into r.pkt) and demux. It
// returns the interface whose TAP r.pkt.Frame is for, or nil when the
// packet stops here (counted). It allocates nothing.
func (r *receiver) input(t *demuxTable, m *Message) *iface {
	p, st := &r.pkt, &r.stats
	if m.Err != nil {
		st.drop(m.Err)
		return nil
	}
	err := erspan.Decode(m.GRE, p)
	switch err {
	case nil:
	case erspan.ErrFrameType, erspan.ErrInnerShort:
		// The headers are valid: charge the drop to the interface that
		// would have taken the frame, as well as daemon-wide.
		st.drop(err)
		if e := r.lookup(t, m, session(p)); e != nil {
			r.count(p, len(m.GRE)-p.Offset)
			if err == erspan.ErrFrameType {
				r.cur.frameType++
			} else {
				r.cur.innerShort++
			}
		}
		return nil
	default:
		st.drop(err)
		return nil
	}
	e := r.lookup(t, m, session(p))
	if e == nil {
		r.cur.unmatched++
		return nil
	}
	r.count(p, len(p.Frame))
	switch p.Type {
	case erspan.TypeI:
		r.cur.typeI++
	case erspan.TypeII:
		r.cur.typeII++
	case erspan.TypeIII:
		r.cur.typeIII++
	}
	captureOnly := e.captureOnly
	if p.Truncated {
		// spec/erspan.md §2: a truncated frame is counted and captured,
		// never given to the network stack.
		r.cur.truncated++
		captureOnly = true
	}
	if captureOnly && !e.monitor {
		// Without monitor mode the TAP hands frames to the stack; these
		// may only be captured, so they stop here.
		r.cur.captureOnly++
		return nil
	}
	return e.ifc
}

func session(p *erspan.Packet) int32 {
	if p.Type == erspan.TypeI {
		return NoSession
	}
	return int32(p.Session)
}

func (s *daemonStats) drop(err error) {
	// A type assertion, not errors.As: the socket and the decoder return
	// bare erspan.Error values, and this runs per bad packet.
	e, ok := err.(erspan.Error)
	if !ok || e >= erspan.NumErrors {
		e = erspan.ErrIPHeader
	}
	s.drops[e].Add(1)
}
