package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// txState is what the transmit loop needs of an interface that may send:
// swapped whole, never mutated, so the loop reads it without a lock.
type txState struct {
	sender   Sender
	session  uint16
	txprio   int // TxPrioPacket or 0..7
	src, dst netip.Addr
	ns       string // the tunnel's namespace, for messages
}

const (
	// txHeadroom is room in front of each frame read from the TAP for the
	// GRE and ERSPAN headers, so the frame is never copied.
	txHeadroom = erspan.EncapTypeIILen
	// txMaxFrame holds the largest frame a TAP of the largest MTU hands
	// out (MTU 65435 + Ethernet and two VLAN tags), rounded up.
	txMaxFrame = 65536
	// defaultPrio is the priority of an untagged frame: OpenBSD's default
	// priority (IFQ_DEFPRIO), as `txprio packet` uses it.
	defaultPrio = 3
)

// applyTx gives ifc the sender cfg asks for: none unless it is up with a
// destination and a session (spec/erspan.md §2, Transmit), a new sender
// when the addresses, TTL, DF or namespace change, and otherwise the same
// sender with new header values. old is the configuration being replaced.
func (h *Host) applyTx(ifc *iface, old, cfg *Config) error {
	cur := ifc.tx.Load()
	if !cfg.Up || !cfg.Dst.IsValid() || cfg.VNetID == NoSession {
		if cur != nil {
			ifc.tx.Store(nil)
			cur.sender.Close()
		}
		return nil
	}
	st := &txState{session: uint16(cfg.VNetID), txprio: cfg.TxPrio, src: cfg.Src, dst: cfg.Dst, ns: cfg.TunnelDomain}
	if cur != nil && old.Src == cfg.Src && old.Dst == cfg.Dst && old.TTL == cfg.TTL &&
		old.DF == cfg.DF && old.TunnelDomain == cfg.TunnelDomain {
		st.sender = cur.sender
		ifc.tx.Store(st)
		return nil
	}
	s, err := h.sys.OpenSender(cfg.TunnelDomain, cfg.Src, cfg.Dst, cfg.TTL, cfg.DF)
	if err != nil {
		return err
	}
	st.sender = s
	ifc.tx.Store(st)
	if cur != nil {
		cur.sender.Close()
	}
	return nil
}

// txBatch is the most frames one wake-up of the transmit loop takes.
const txBatch = 64

// transmit is the transmit loop of one interface, from its creation to its
// destruction: every frame that leaves erspanN (sent by the stack, mirrored
// to it from a bridge, written by a packet socket) is read from the TAP and
// sent as GRE + ERSPAN Type II, or counted as dropped when the interface
// may not send. Frames are never truncated, coalesced or segmented.
//
// Each wake-up drains the TAP queue and sends the batch with one sendmmsg
// (design.md, Transmit); headers go into headroom in front of each frame,
// which is never copied. Buffers are 64 KiB (the largest frame a TAP of the
// largest MTU hands out); the loop starts with one and doubles its batch
// only when a burst fills every buffer it has, so the many interfaces that
// never send (collectors) hold one buffer each.
func (h *Host) transmit(ifc *iface) {
	defer close(ifc.txDone)
	const limit = txBatch
	bufs := make([][]byte, limit)
	bufs[0] = make([]byte, txHeadroom+txMaxFrame)
	have := 1
	sizes := make([]int, limit)
	pkts := make([][]byte, limit)
	tos := make([]uint8, limit)
	var p erspan.Packet
	var backoff time.Duration
	s := &ifc.stats
	var y yielder
	var readLog, sendLog errLog
	for {
		y.batch()
		n, err := ifc.queue.ReadBatch(bufs[:have], sizes, txHeadroom)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, unix.EBADFD) {
				// The kernel detached the queue: the TAP was removed
				// outside erspand. Nothing will come from it again.
				h.log.errorf("%s: the TAP was removed outside erspand (ip link del?): nothing is sent for it; destroy and create the interface again", ifc.name)
				return
			}
			if ok, more := readLog.should(err, time.Now()); ok {
				h.log.errorf("%s: read from the TAP: %v%s", ifc.name, err, more)
			}
			backoff = min(max(backoff*2, time.Millisecond), 100*time.Millisecond)
			time.Sleep(backoff)
			continue
		}
		if more, ok := readLog.fine(time.Now); ok {
			h.log.errorf("%s: reading from the TAP works again%s", ifc.name, more)
		}
		backoff = 0
		if n == have && have < limit {
			grown := min(2*have, limit)
			for i := have; i < grown; i++ {
				bufs[i] = make([]byte, txHeadroom+txMaxFrame)
			}
			have = grown
		}
		st := ifc.tx.Load()
		if st == nil {
			s.txNoTunnel.Add(uint64(n))
			continue
		}
		seq := ifc.seq.Add(uint32(n)) - uint32(n) // the batch's numbers, taken at once
		for i := 0; i < n; i++ {
			pkts[i], tos[i] = encap(bufs[i], sizes[i], st, seq+uint32(i), &p)
		}
		sent, tooBig, bytes, err := st.sender.SendBatch(pkts[:n], tos[:n])
		if err != nil {
			if ok, more := sendLog.should(err, time.Now()); ok {
				h.log.errorf("%s: sending ERSPAN from %s to %s: %v%s (frames counted in tx_errors)%s",
					ifc.name, st.src, st.dst, err, sendHint(err, st), more)
			}
		} else if more, ok := sendLog.fine(time.Now); ok {
			h.log.errorf("%s: sending ERSPAN to %s works again%s", ifc.name, st.dst, more)
		}
		s.txPackets.Add(uint64(sent))
		s.txBytes.Add(bytes - uint64(sent)*txHeadroom) // frame bytes, as rx_bytes
		s.txTooBig.Add(uint64(tooBig))                 // tunneldf: dropped, never truncated
		s.txErrors.Add(uint64(n - sent - tooBig))
	}
}

// encap writes the GRE and ERSPAN Type II headers into the headroom of
// buf, in front of the size-byte frame at buf[txHeadroom:], and returns the
// packet and its outer TOS. spec/erspan.md §2 Transmit: Ver 1, the session,
// COS = the frame's priority, VLAN 0, En 0, T 0, Index 0, and sequence
// number seq: one per frame encapsulated, as OpenBSD, so a frame lost here
// (too big with df) is a gap a collector sees, like any other mirrored
// frame that never arrived. It allocates nothing.
func encap(buf []byte, size int, st *txState, seq uint32, p *erspan.Packet) ([]byte, uint8) {
	prio := framePrio(buf[txHeadroom : txHeadroom+size])
	*p = erspan.Packet{Type: erspan.TypeII, HasSeq: true, Seq: seq, Session: st.session, COS: prio}
	_, _ = erspan.Encode(buf[:txHeadroom], p) // cannot fail: the headroom fits
	tos := prio << 5
	if st.txprio != TxPrioPacket {
		tos = uint8(st.txprio) << 5
	}
	return buf[:txHeadroom+size], tos
}

// framePrio is a frame's priority for `txprio packet`: the PCP of its
// outer 802.1Q or 802.1ad tag, or the default priority when untagged.
func framePrio(f []byte) uint8 {
	if len(f) >= 16 {
		if et := uint16(f[12])<<8 | uint16(f[13]); et == 0x8100 || et == 0x88a8 {
			return f[14] >> 5
		}
	}
	return defaultPrio
}

// errLog decides when a data-path loop logs an error: when it differs
// from the one logged last, or errLogEvery after that line. A lasting
// error (no route) or one that comes and goes (a congested link failing
// every few batches) then logs a line every errLogEvery, not one per
// batch; the counters count every frame.
type errLog struct {
	last       error
	at         time.Time
	suppressed int
	// said: fine has reported the failures suppressed since last's line
	// (it does so once per line, or a link failing every other batch
	// would have a line per batch).
	said bool
}

const errLogEvery = 10 * time.Second

// should reports whether to log err at now, and then the text to append
// to the line about the failures not logged since the last line (which
// were all of the error that line logged).
func (l *errLog) should(err error, now time.Time) (bool, string) {
	if l.last != nil && (err == l.last || err.Error() == l.last.Error()) && now.Sub(l.at) < errLogEvery {
		l.suppressed++
		return false, ""
	}
	more := l.notLogged(now)
	l.last, l.at, l.suppressed, l.said = err, now, 0, false
	return true, more
}

// fine is called after a batch that did not fail: if failures went
// unlogged since the last line, it returns the text of a line about them,
// once per line logged. The error is not forgotten: the same one within
// errLogEvery of its line is still counted, not logged, so that one that
// comes and goes costs a few lines per errLogEvery, not one per batch.
// It asks clock for the time only then: a loop calls it per batch.
func (l *errLog) fine(clock func() time.Time) (string, bool) {
	if l.suppressed == 0 || l.said {
		return "", false
	}
	more := l.notLogged(clock())
	l.suppressed, l.said = 0, true
	return more, true
}

// notLogged says how many batches failed with the last error logged
// since its line; "" when none.
func (l *errLog) notLogged(now time.Time) string {
	if l.suppressed == 0 {
		return ""
	}
	return fmt.Sprintf("; %d more batches failed with %q, not logged, in the %v after its line",
		l.suppressed, l.last.Error(), now.Sub(l.at).Round(100*time.Millisecond))
}

// sendHint says what a send error most likely means for a tunnel.
func sendHint(err error, st *txState) string {
	where := "this host"
	if st.ns != "" {
		where = "network namespace " + st.ns
	}
	switch {
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EADDRNOTAVAIL):
		return fmt.Sprintf(": is %s an address of %s?", st.src, where)
	case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH):
		return fmt.Sprintf(": %s has no route to %s", where, st.dst)
	case errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.EAGAIN):
		return ": the link is congested, the send buffer full (erspand --tx-buffer)"
	}
	return ""
}
