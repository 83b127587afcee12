package tunnel

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/erspan-linux/erspan/erspan"
)

// txState is what the transmit loop needs of an interface that may send:
// swapped whole, never mutated, so the loop reads it without a lock.
type txState struct {
	sender  Sender
	session uint16
	txprio  int // TxPrioPacket or 0..7
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
// destination and a session (spec/erspan.md §2, Transmit), a new socket
// when the addresses, TTL, DF or namespace change, and otherwise the same
// socket with new header values. old is the configuration being replaced.
func (h *Host) applyTx(ifc *iface, old, cfg *Config) error {
	cur := ifc.tx.Load()
	if !cfg.Up || !cfg.Dst.IsValid() || cfg.VNetID == NoSession {
		if cur != nil {
			ifc.tx.Store(nil)
			cur.sender.Close()
		}
		return nil
	}
	st := &txState{session: uint16(cfg.VNetID), txprio: cfg.TxPrio}
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

// transmit is the transmit loop of one interface, from its creation to its
// destruction: every frame that leaves erspanN (sent by the stack, mirrored
// to it from a bridge, written by a packet socket) is read from the TAP and
// sent as GRE + ERSPAN Type II, or counted as dropped when the interface
// may not send. Frames are never truncated, coalesced or segmented.
func (h *Host) transmit(ifc *iface) {
	defer close(ifc.txDone)
	buf := make([]byte, txHeadroom+txMaxFrame)
	var p erspan.Packet
	var backoff time.Duration
	s := &ifc.stats
	for {
		n, err := ifc.queue.Read(buf[txHeadroom:])
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(backoff*2, time.Millisecond), 100*time.Millisecond)
			h.log.errorf("%s: read from the TAP: %v", ifc.cfg.Name, err)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		st := ifc.tx.Load()
		if st == nil {
			s.txNoTunnel.Add(1)
			continue
		}
		frame := buf[txHeadroom : txHeadroom+n]
		prio := framePrio(frame)
		// spec/erspan.md §2 Transmit: Ver 1, the session, COS = the
		// frame's priority, VLAN 0, En 0, T 0, Index 0.
		p = erspan.Packet{Type: erspan.TypeII, HasSeq: true, Seq: ifc.seq.Load(), Session: st.session, COS: prio}
		if _, err := erspan.Encode(buf[:txHeadroom], &p); err != nil {
			s.txErrors.Add(1)
			continue
		}
		tos := prio
		if st.txprio != TxPrioPacket {
			tos = uint8(st.txprio)
		}
		if err := st.sender.Send(buf[:txHeadroom+n], tos<<5); err != nil {
			if errors.Is(err, syscall.EMSGSIZE) {
				s.txTooBig.Add(1) // tunneldf: dropped, never truncated
			} else {
				s.txErrors.Add(1)
			}
			continue
		}
		// The sequence number advances only for frames that left: a
		// collector then sees a gap only for frames lost on the way.
		ifc.seq.Add(1)
		s.txPackets.Add(1)
		s.txBytes.Add(uint64(n))
	}
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
