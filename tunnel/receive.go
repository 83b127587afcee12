package tunnel

import (
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/erspan-linux/erspan/erspan"
)

// receiver runs the receive path of one socket: socket -> erspan.Decode ->
// demux -> TAP.
type receiver struct {
	h     *Host
	sock  Socket
	table atomic.Pointer[demuxTable] // for this socket's namespace
	done  chan struct{}
	pkt   erspan.Packet // scratch, reused per packet
}

func (r *receiver) run() {
	defer close(r.done)
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
		t := r.table.Load()
		for i := range msgs {
			r.h.input(t, &msgs[i], &r.pkt)
		}
	}
}

// input takes one packet through decode and demux to its TAP. It allocates
// nothing.
func (h *Host) input(t *demuxTable, m *Message, p *erspan.Packet) {
	h.stats.rxPackets.Add(1)
	if h.deny.Load() {
		h.stats.disallowed.Add(1)
		return
	}
	if m.Err != nil {
		h.drop(m.Err)
		return
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
		return
	default:
		h.drop(err)
		return
	}
	r := t.lookup(m.Dst, m.Src, session(p))
	if r == nil {
		h.stats.unmatched.Add(1)
		return
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
		return
	}
	if _, err := r.ifc.queue.Write(p.Frame); err != nil {
		s.rxErrors.Add(1)
		return
	}
	s.rxPackets.Add(1)
	s.rxBytes.Add(uint64(len(p.Frame)))
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
