package tunnel

import (
	"errors"
	"net"
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
}

func newReceiver(h *Host, s Socket) *receiver {
	r := &receiver{h: h, sock: s, out: h.sys.NewFrameWriter(rxWriteBatch),
		outIf: make([]queued, 0, rxWriteBatch), done: make(chan struct{})}
	r.table.Store(&demuxTable{})
	return r
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
	for {
		msgs, err := r.sock.ReadBatch()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Back off on repeated errors rather than spin; a single
			// error (ENOBUFS, say) costs nothing.
			backoff = min(max(backoff*2, time.Millisecond), 100*time.Millisecond)
			r.h.log.errorf("GRE receive: %v", err)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		r.handle(r.table.Load(), msgs)
	}
}

// handle takes a batch of packets through decode and demux into their
// TAPs. It allocates nothing.
func (r *receiver) handle(t *demuxTable, msgs []Message) {
	for i := range msgs {
		ifc := r.h.input(t, &msgs[i], &r.pkt)
		if ifc == nil {
			continue
		}
		if !r.out.Add(ifc.queue, r.pkt.Frame) {
			r.flush()
			r.out.Add(ifc.queue, r.pkt.Frame)
		}
		r.outIf = append(r.outIf, queued{ifc, len(r.pkt.Frame)})
	}
	r.flush()
}

// flush writes the queued frames and counts them on their interfaces.
func (r *receiver) flush() {
	if len(r.outIf) == 0 {
		return
	}
	for i, err := range r.out.Flush() {
		s := &r.outIf[i].ifc.stats
		if err != nil {
			s.rxErrors.Add(1)
			continue
		}
		s.rxPackets.Add(1)
		s.rxBytes.Add(uint64(r.outIf[i].len))
	}
	clear(r.outIf)
	r.outIf = r.outIf[:0]
}

// input takes one packet through decode and demux. It returns the
// interface whose TAP p.Frame is for, or nil when the packet stops here
// (counted). It allocates nothing.
func (h *Host) input(t *demuxTable, m *Message, p *erspan.Packet) *iface {
	h.stats.rxPackets.Add(1)
	if h.deny.Load() {
		h.stats.disallowed.Add(1)
		return nil
	}
	if m.Err != nil {
		h.drop(m.Err)
		return nil
	}
	err := erspan.Decode(m.GRE, p)
	switch err {
	case nil:
	case erspan.ErrFrameType, erspan.ErrInnerShort:
		// The headers are valid: charge the drop to the interface that
		// would have taken the frame, as well as daemon-wide.
		h.drop(err)
		if r := t.lookup(m.Dst, m.Src, session(p)); r != nil {
			r.ifc.flows.count(m.Src, p, len(m.GRE)-p.Offset)
			if err == erspan.ErrFrameType {
				r.ifc.stats.rxFrameType.Add(1)
			} else {
				r.ifc.stats.rxInnerShort.Add(1)
			}
		}
		return nil
	default:
		h.drop(err)
		return nil
	}
	r := t.lookup(m.Dst, m.Src, session(p))
	if r == nil {
		h.stats.unmatched.Add(1)
		return nil
	}
	s := &r.ifc.stats
	s.countType(p.Type)
	r.ifc.flows.count(m.Src, p, len(p.Frame))
	captureOnly := r.captureOnly
	if p.Truncated {
		// spec/erspan.md §2: a truncated frame is counted and captured,
		// never given to the network stack.
		s.rxTruncated.Add(1)
		captureOnly = true
	}
	if captureOnly && !r.monitor {
		// Without monitor mode the TAP hands frames to the stack; these
		// may only be captured, so they stop here.
		s.rxCaptureOnly.Add(1)
		return nil
	}
	return r.ifc
}

func session(p *erspan.Packet) int32 {
	if p.Type == erspan.TypeI {
		return NoSession
	}
	return int32(p.Session)
}

func (h *Host) drop(err error) {
	// A type assertion, not errors.As: the socket and the decoder return
	// bare erspan.Error values, and this runs per bad packet.
	e, ok := err.(erspan.Error)
	if !ok || e >= erspan.NumErrors {
		e = erspan.ErrIPHeader
	}
	h.stats.drops[e].Add(1)
}
