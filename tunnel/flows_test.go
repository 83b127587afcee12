package tunnel

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/erspan-linux/erspan/erspan"
)

func TestFlowLossCounters(t *testing.T) {
	ft := newFlowRig(t)
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.3")
	send := func(src netip.Addr, seqs ...uint32) {
		ft.send(src, 100, seqPackets(erspan.TypeII, 1, seqs...)...)
	}
	// Source a: 14 -> 17 skips 15 and 16; 16 comes late; 17 again; 15
	// late; 20 skips 18 and 19 for good.
	send(a, 10, 11, 12, 13, 14, 17, 16, 17, 15, 20)
	// Source b: the same session with its own sequence space (the
	// tcpdump erspan-type-ii-2 capture has two such switches).
	send(b, 1000, 1001, 1003)
	// Source c: always 0 (as the arkime capture): no sequence, no loss.
	c := netip.MustParseAddr("198.51.100.7")
	send(c, 0, 0, 0)
	// Type I: no sequence at all.
	ft.send(c, 60, erspan.Packet{Type: erspan.TypeI})

	flows, overflow := ft.flows(4)
	if overflow != 0 || len(flows) != 4 {
		t.Fatalf("%d flows, %d overflow: %+v", len(flows), overflow, flows)
	}
	fa, fb, fc, fcI := flows[0], flows[1], flows[3], flows[2]
	want := Flow{Source: a, Session: 1, Packets: 10, Bytes: 1000, LastSeq: 20, Gaps: 2, Lost: 2, Reordered: 2, Duplicates: 1}
	if fa != want {
		t.Errorf("a:\n got %+v\nwant %+v", fa, want)
	}
	if fb.Source != b || fb.Gaps != 1 || fb.Lost != 1 || fb.Reordered != 0 || fb.LastSeq != 1003 {
		t.Errorf("b: %+v", fb)
	}
	if fc.Session != 1 || !fc.NoSequence || fc.Packets != 3 || fc.Lost != 0 || fc.Duplicates != 0 {
		t.Errorf("always-0 source: %+v", fc)
	}
	if fcI.Session != NoSession || !fcI.NoSequence || fcI.Packets != 1 {
		t.Errorf("Type I: %+v", fcI)
	}
}

func TestFlowExact(t *testing.T) {
	ft := newFlowRig(t)
	a := netip.MustParseAddr("2001:db8::1")
	ft.send(a, 64, seqPackets(erspan.TypeIII, 9, 1, 2, 3, 6, 5, 5, 7, 9, 8, 12)...)
	f, _ := ft.flows(6)
	// Gaps at 3->6 (4,5 missing) and 7->9 (8) and 9->12 (10,11): 3 gaps,
	// 5 skipped; 5 and 8 came late: 3 lost for good (4, 10, 11); the
	// second 5 is a duplicate.
	want := Flow{Source: a, Session: 9, Packets: 10, Bytes: 640, LastSeq: 12, Gaps: 3, Lost: 3, Reordered: 2, Duplicates: 1}
	if f[0] != want {
		t.Errorf("got  %+v\nwant %+v", f[0], want)
	}
}

func TestFlowRestartAndWrap(t *testing.T) {
	ft := newFlowRig(t)
	a := netip.MustParseAddr("192.0.2.1")
	ft.send(a, 64, seqPackets(erspan.TypeII, 0, 0xfffffffe, 0xffffffff, 0, 1, 500000, 500001, 3)...)
	f, _ := ft.flows(4)
	// The wrap is in order; 1 -> 500000 is a gap of 499998; 500001 -> 3
	// goes back by more than 2^16: the switch restarted its counter.
	if f[0].Gaps != 1 || f[0].Lost != 499998 || f[0].Restarts != 1 || f[0].LastSeq != 3 || f[0].Reordered != 0 {
		t.Errorf("%+v", f[0])
	}
}

// TestFlowLimit: past maxFlows sources an interface tracks no new one,
// counts their packets as overflow and still delivers them; through the
// receiver, which does the counting in production.
func TestFlowLimit(t *testing.T) {
	r := newRig(t)
	q := r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, VNetID: NoSession})
	q.keep = false
	msgs := make([]Message, maxFlows+10)
	for i := range msgs {
		src := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		msgs[i] = Message{Src: src, Dst: local, GRE: gre(t, erspan.Packet{Type: erspan.TypeI}, frame(1, 64))}
	}
	r.sys.socket(4).inject(msgs...)
	f, overflow := r.h.Flows("erspan0")
	if len(f) != maxFlows || overflow != 10 {
		t.Errorf("%d flows, %d overflow; want %d and 10", len(f), overflow, maxFlows)
	}
	if c := r.h.Counters("erspan0"); c.RxPackets != uint64(len(msgs)) {
		t.Errorf("%d frames delivered, want all %d", c.RxPackets, len(msgs))
	}
}

// A counter that starts at 0 and then skips shows the gap: only a source
// that sent 0 more than once is taken for one that always sends 0.
func TestFlowStartsAtZero(t *testing.T) {
	ft := newFlowRig(t)
	a := netip.MustParseAddr("192.0.2.1")
	ft.send(a, 64, seqPackets(erspan.TypeII, 0, 0, 2, 3)...)
	f, _ := ft.flows(4)
	if f[0].NoSequence || f[0].Gaps != 1 || f[0].Lost != 1 || f[0].LastSeq != 3 {
		t.Errorf("%+v", f[0])
	}
}

// flowRig counts packets through the receiver, as production does: two
// catch-all interfaces, erspan4 (IPv4) and erspan6 (IPv6), take any
// source and session.
type flowRig struct {
	t *testing.T
	r *rig
}

func newFlowRig(t *testing.T) *flowRig {
	r := newRig(t)
	r.add(Config{Name: "erspan4", Up: true, Monitor: true, Src: local, VNetID: NoSession}).keep = false
	r.add(Config{Name: "erspan6", Up: true, Monitor: true, Src: local6, VNetID: NoSession}).keep = false
	return &flowRig{t: t, r: r}
}

// send sends pkts from src, each with an inner frame of n bytes, as one
// socket batch.
func (f *flowRig) send(src netip.Addr, n int, pkts ...erspan.Packet) {
	f.t.Helper()
	dst, family := local, 4
	if src.Is6() {
		dst, family = local6, 6
	}
	msgs := make([]Message, len(pkts))
	for i, p := range pkts {
		msgs[i] = Message{Src: src, Dst: dst, GRE: gre(f.t, p, frame(byte(i), n))}
	}
	f.r.sys.socket(family).inject(msgs...)
}

// flows returns the flows of the catch-all of family 4 or 6.
func (f *flowRig) flows(family int) ([]Flow, uint64) {
	return f.r.h.Flows(fmt.Sprintf("erspan%d", family))
}

// seqPackets returns packets of type typ and session carrying seqs.
func seqPackets(typ erspan.Type, session uint16, seqs ...uint32) []erspan.Packet {
	out := make([]erspan.Packet, len(seqs))
	for i, s := range seqs {
		out[i] = erspan.Packet{Type: typ, HasSeq: true, Seq: s, Session: session}
	}
	return out
}
