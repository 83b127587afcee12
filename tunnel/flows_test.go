package tunnel

import (
	"net/netip"
	"testing"

	"github.com/erspan-linux/erspan/erspan"
)

func TestFlowLossCounters(t *testing.T) {
	var ft flowTable
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.3")
	send := func(src netip.Addr, seqs ...uint32) {
		for _, s := range seqs {
			p := erspan.Packet{Type: erspan.TypeII, HasSeq: true, Seq: s, Session: 1}
			ft.count(src, &p, 100)
		}
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
	ft.count(c, &erspan.Packet{Type: erspan.TypeI}, 60)

	flows, overflow := ft.snapshot()
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
	var ft flowTable
	a := netip.MustParseAddr("2001:db8::1")
	for _, s := range []uint32{1, 2, 3, 6, 5, 5, 7, 9, 8, 12} {
		p := erspan.Packet{Type: erspan.TypeIII, HasSeq: true, Seq: s, Session: 9}
		ft.count(a, &p, 64)
	}
	f, _ := ft.snapshot()
	// Gaps at 3->6 (4,5 missing) and 7->9 (8) and 9->12 (10,11): 3 gaps,
	// 5 skipped; 5 and 8 came late: 3 lost for good (4, 10, 11); the
	// second 5 is a duplicate.
	want := Flow{Source: a, Session: 9, Packets: 10, Bytes: 640, LastSeq: 12, Gaps: 3, Lost: 3, Reordered: 2, Duplicates: 1}
	if f[0] != want {
		t.Errorf("got  %+v\nwant %+v", f[0], want)
	}
}

func TestFlowRestartAndWrap(t *testing.T) {
	var ft flowTable
	a := netip.MustParseAddr("192.0.2.1")
	for _, s := range []uint32{0xfffffffe, 0xffffffff, 0, 1, 500000, 500001, 3} {
		p := erspan.Packet{Type: erspan.TypeII, HasSeq: true, Seq: s}
		ft.count(a, &p, 64)
	}
	f, _ := ft.snapshot()
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
	var ft flowTable
	a := netip.MustParseAddr("192.0.2.1")
	for _, s := range []uint32{0, 2, 3} {
		p := erspan.Packet{Type: erspan.TypeII, HasSeq: true, Seq: s}
		ft.count(a, &p, 64)
	}
	f, _ := ft.snapshot()
	if f[0].NoSequence || f[0].Gaps != 1 || f[0].Lost != 1 || f[0].LastSeq != 3 {
		t.Errorf("%+v", f[0])
	}
}

// count records one packet from src as a receiver's run of one packet
// would (receiver.lookup, count and endRun), for the tests of the
// sequence logic; TestFlowLimit and TestRunsInBatch count through the
// receiver itself.
func (t *flowTable) count(src netip.Addr, p *erspan.Packet, n int) {
	f := t.get(flowKey{src: src, session: session(p)})
	if f == nil {
		t.overflow.Add(1)
		return
	}
	f.packets.Add(1)
	f.bytes.Add(uint64(n))
	if p.HasSeq {
		f.sequence(p.Seq)
	}
	f.publish()
}
