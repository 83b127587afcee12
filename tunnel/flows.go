package tunnel

import (
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
)

// Mirror-loss accounting per (source address, session) on each interface:
// no switch reports the frames its mirror session lost, but the GRE
// sequence number of Type II (and of Type III with S) shows them. Frames
// are never dropped for a sequence anomaly; they are only counted.
const (
	// maxFlows bounds the sources tracked per interface, so that spoofed
	// sources cannot grow memory without end; beyond it packets are
	// counted in FlowOverflow only.
	maxFlows = 1024
	// seqWindow is how far behind the highest sequence number seen a
	// packet can be told apart as reordered or duplicate (a bitmap, as
	// IPsec's replay window).
	seqWindow = 64
	// seqRestart: a packet this far behind the highest seen is a source
	// that restarted its counter, not a reordered one.
	seqRestart = 1 << 16
)

type flowKey struct {
	src     netip.Addr
	session int32 // NoSession for Type I
}

// flow is one source's session. The counters are atomics for readers; the
// sequence state is plain, touched only by the receiver that owns the
// source's address family and namespace, and published to lastSeq and
// tracking (for readers) once per run of packets, not per packet.
type flow struct {
	key                              flowKey // set once, at creation
	packets, bytes                   atomic.Uint64
	gaps, lost, reordered, dups, res atomic.Uint64
	lastSeq                          atomic.Uint32 // published last
	tracking                         atomic.Bool   // published tracked

	last    uint32 // the highest sequence number seen
	tracked bool   // a nonzero sequence number has been seen
	window  uint64 // bit i: last-i was seen
	zeros   int    // sequence number 0 seen before tracking began
}

// publish makes the sequence state visible to readers (snapshot). It
// stores only what changed: a store is an atomic exchange on amd64, and
// publish runs once per run of packets (per packet when sessions
// interleave), while tracking changes once in a flow's life and lastSeq
// never for a source without sequence numbers.
func (f *flow) publish() {
	if f.lastSeq.Load() != f.last {
		f.lastSeq.Store(f.last)
	}
	if f.tracking.Load() != f.tracked {
		f.tracking.Store(f.tracked)
	}
}

// Flow is the report of one (source, session).
type Flow struct {
	Source  netip.Addr
	Session int // NoSession for Type I
	Packets uint64
	Bytes   uint64
	// NoSequence: the source sends no sequence numbers (Type I, Type III
	// without S) or always 0; loss cannot be told.
	NoSequence bool
	LastSeq    uint32
	Gaps       uint64 // times sequence numbers were skipped
	Lost       uint64 // frames skipped and never seen late
	Reordered  uint64 // frames that came after a higher sequence number
	Duplicates uint64
	Restarts   uint64 // the source's sequence counter went back to an old value
}

// flowTable is copy-on-write: receivers load the map without a lock and
// only the rare new source takes mu to publish a larger copy.
type flowTable struct {
	m        atomic.Pointer[map[flowKey]*flow]
	mu       sync.Mutex
	overflow atomic.Uint64
}

func (t *flowTable) get(k flowKey) *flow {
	if m := t.m.Load(); m != nil {
		if f := (*m)[k]; f != nil {
			return f
		}
		if len(*m) >= maxFlows {
			// Full: no lock, or a flood of spoofed sources would take
			// it per packet. (The map only grows.)
			return nil
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.m.Load()
	if old != nil {
		if f := (*old)[k]; f != nil {
			return f
		}
		if len(*old) >= maxFlows {
			return nil
		}
	}
	m := make(map[flowKey]*flow, 1+lenOf(old))
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	f := &flow{key: k}
	m[k] = f
	t.m.Store(&m)
	return f
}

func lenOf(m *map[flowKey]*flow) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

func (f *flow) sequence(seq uint32) {
	if !f.tracked {
		// Until a nonzero number comes, the source may be one that
		// always sends 0 (seen in the wild): not loss, not duplicates.
		if seq == 0 {
			f.zeros++
			return
		}
		f.tracked = true
		f.window = 1
		if f.zeros != 1 {
			f.last = seq
			return
		}
		// A single 0 first: a counter that started at 0, as ours
		// does. Go on from it, so that a gap right after it shows.
		f.last = 0
	}
	last := f.last
	d := int32(seq - last) // serial arithmetic: wraps at 2^32
	switch {
	case d > 0:
		if d > 1 {
			f.gaps.Add(1)
			f.lost.Add(uint64(d - 1))
		}
		if d >= seqWindow {
			f.window = 1
		} else {
			f.window = f.window<<uint(d) | 1
		}
		f.last = seq
	case d == 0:
		f.dups.Add(1)
	case -d < seqWindow:
		bit := uint64(1) << uint(-d)
		if f.window&bit != 0 {
			f.dups.Add(1)
			return
		}
		f.window |= bit
		f.reorderedLate()
	case -d < seqRestart:
		// Too old for the window: late, counted as reordered.
		f.reorderedLate()
	default:
		f.res.Add(1)
		f.last = seq
		f.window = 1
	}
}

// reorderedLate counts a frame that arrived after higher numbers: it was
// counted lost when the gap was seen, and is not lost after all.
func (f *flow) reorderedLate() {
	f.reordered.Add(1)
	for {
		l := f.lost.Load()
		if l == 0 || f.lost.CompareAndSwap(l, l-1) {
			return
		}
	}
}

// snapshot returns the flows sorted by source and session, and the count
// of packets from sources beyond maxFlows.
func (t *flowTable) snapshot() ([]Flow, uint64) {
	m := t.m.Load()
	var out []Flow
	if m != nil {
		for k, f := range *m {
			out = append(out, Flow{
				Source: k.src, Session: int(k.session),
				Packets: f.packets.Load(), Bytes: f.bytes.Load(),
				NoSequence: !f.tracking.Load(), LastSeq: f.lastSeq.Load(),
				Gaps: f.gaps.Load(), Lost: f.lost.Load(), Reordered: f.reordered.Load(),
				Duplicates: f.dups.Load(), Restarts: f.res.Load(),
			})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Source.Compare(out[j].Source); c != 0 {
			return c < 0
		}
		return out[i].Session < out[j].Session
	})
	return out, t.overflow.Load()
}
