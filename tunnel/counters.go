package tunnel

import (
	"sync/atomic"

	"github.com/erspan-linux/erspan/erspan"
)

// IfCounters are one interface's receive counters, as reported. JSON names
// are a stable interface for scripts (`erspanctl -j`).
type IfCounters struct {
	RxPackets   uint64 `json:"rx_packets"`   // frames written to the TAP
	RxBytes     uint64 `json:"rx_bytes"`     // inner frame bytes written to the TAP
	RxTruncated uint64 `json:"rx_truncated"` // frames with the ERSPAN T bit, delivered or not
	// RxCaptureOnly counts frames that may only be captured (T bit,
	// session-only and catch-all matches: spec/erspan.md §2 Receive) and
	// were dropped because monitor mode was off.
	RxCaptureOnly uint64 `json:"rx_capture_only"`
	RxFrameType   uint64 `json:"rx_frame_type"`  // Type III with FT != 0 (not Ethernet), dropped
	RxInnerShort  uint64 `json:"rx_inner_short"` // inner frame < 14 bytes, dropped
	RxErrors      uint64 `json:"rx_errors"`      // TAP write failures, dropped
	TypeI         uint64 `json:"rx_type1"`       // Type I packets taken by this interface
	TypeII        uint64 `json:"rx_type2"`       // Type II packets taken by this interface
	TypeIII       uint64 `json:"rx_type3"`       // Type III packets taken by this interface

	TxPackets uint64 `json:"tx_packets"` // frames sent as ERSPAN Type II
	TxBytes   uint64 `json:"tx_bytes"`   // frame bytes sent (without outer headers)
	// TxNoTunnel counts frames that left erspanN while it could not send
	// them: down, or without destination or session.
	TxNoTunnel uint64 `json:"tx_no_tunnel"`
	TxTooBig   uint64 `json:"tx_too_big"` // too big to send with tunneldf, dropped
	TxErrors   uint64 `json:"tx_errors"`  // send failures, dropped
}

// DaemonCounters are the counters no single interface owns.
type DaemonCounters struct {
	RxPackets uint64 // GRE packets the receive sockets passed up
	Unmatched uint64 // well-formed ERSPAN no interface took (spec §2, step 4)
	// Disallowed counts GRE dropped because net.inet.gre.allow is 0.
	Disallowed uint64
	// Drops counts malformed packets by erspan.Error value.
	Drops [erspan.NumErrors]uint64
	// KernelDrops counts packets the kernel dropped on full receive
	// buffers (SO_RXQ_OVFL), full eBPF rings (their drops map) and full
	// capture rings (PACKET_STATISTICS), over every socket the daemon
	// ever opened.
	KernelDrops uint64
}

// ifStats is the live form of IfCounters. Counters are atomics: the
// receiver delivering to the interface (one at a time in practice: its
// address family, or its sensor NIC) writes them while erspanctl reads
// them, and the transmit loop owns the tx ones.
//
// The receive path's counters of a frame taken come first, the tx ones
// last. Putting the first on a cache line of their own (a separate,
// aligned allocation, 3d2d63f) was undone for want of a gain: when the
// sessions of many interfaces interleave, each frame's counters are a
// cold line, and the locked adds to them took 4.0% of erspand's samples
// on two lines, 3.6% on one, with no difference in frames per
// CPU-second beside the runs' spread.
type ifStats struct {
	rxPackets, rxBytes, rxErrors, rxTruncated, rxCaptureOnly atomic.Uint64
	typeI, typeII, typeIII                                   atomic.Uint64
	rxFrameType, rxInnerShort                                atomic.Uint64
	txPackets, txBytes, txNoTunnel, txTooBig, txErrors       atomic.Uint64
}

func (s *ifStats) snapshot() IfCounters {
	return IfCounters{
		RxPackets:     s.rxPackets.Load(),
		RxBytes:       s.rxBytes.Load(),
		RxTruncated:   s.rxTruncated.Load(),
		RxCaptureOnly: s.rxCaptureOnly.Load(),
		RxFrameType:   s.rxFrameType.Load(),
		RxInnerShort:  s.rxInnerShort.Load(),
		RxErrors:      s.rxErrors.Load(),
		TypeI:         s.typeI.Load(),
		TypeII:        s.typeII.Load(),
		TypeIII:       s.typeIII.Load(),
		TxPackets:     s.txPackets.Load(),
		TxBytes:       s.txBytes.Load(),
		TxNoTunnel:    s.txNoTunnel.Load(),
		TxTooBig:      s.txTooBig.Load(),
		TxErrors:      s.txErrors.Load(),
	}
}

// daemonStats are daemon-wide counters: each receiver keeps its own, the
// Host those of the receivers already stopped.
type daemonStats struct {
	rxPackets, unmatched, disallowed atomic.Uint64
	drops                            [erspan.NumErrors]atomic.Uint64
}

// addTo adds s to c.
func (s *daemonStats) addTo(c *DaemonCounters) {
	c.RxPackets += s.rxPackets.Load()
	c.Unmatched += s.unmatched.Load()
	c.Disallowed += s.disallowed.Load()
	for i := range c.Drops {
		c.Drops[i] += s.drops[i].Load()
	}
}

// fold adds the counts of s, a receiver's that stopped, into t.
func (s *daemonStats) fold(t *daemonStats) {
	t.rxPackets.Add(s.rxPackets.Load())
	t.unmatched.Add(s.unmatched.Load())
	t.disallowed.Add(s.disallowed.Load())
	for i := range s.drops {
		t.drops[i].Add(s.drops[i].Load())
	}
}
