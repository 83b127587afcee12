package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

var (
	local   = netip.MustParseAddr("192.0.2.2")
	remote  = netip.MustParseAddr("192.0.2.1")
	remote2 = netip.MustParseAddr("192.0.2.3")
	local6  = netip.MustParseAddr("2001:db8::2")
	remote6 = netip.MustParseAddr("2001:db8::1")
)

// frame is a recognisable inner Ethernet frame.
func frame(tag byte, n int) []byte {
	f := make([]byte, n)
	copy(f, []byte{0x02, 0, 0, 0, 0, tag, 0x02, 0, 0, 0, 0, 0xee, 0x08, 0x00})
	for i := 14; i < n; i++ {
		f[i] = tag
	}
	return f
}

// gre builds a GRE+ERSPAN packet around f with erspan.Encode.
func gre(t testing.TB, p erspan.Packet, f []byte) []byte {
	t.Helper()
	b := make([]byte, erspan.HeaderLen(&p)+len(f))
	n, err := erspan.Encode(b, &p)
	if err != nil {
		t.Fatal(err)
	}
	copy(b[n:], f)
	return b
}

func typeII(session uint16) erspan.Packet {
	return erspan.Packet{Type: erspan.TypeII, HasSeq: true, Session: session}
}

type rig struct {
	t   *testing.T
	sys *memSystem
	h   *Host
}

func newRig(t *testing.T) *rig {
	sys := newMemSystem()
	h := NewHost(sys, nil)
	t.Cleanup(func() { h.Close() })
	return &rig{t: t, sys: sys, h: h}
}

func (r *rig) add(cfg Config) *memQueue {
	r.t.Helper()
	name := cfg.Name
	up := cfg.Up
	cfg.Up = false
	if _, err := r.h.Create(Config{Name: name, VNetID: NoSession, Monitor: true, MTU: 1500}); err != nil {
		r.t.Fatal(err)
	}
	cfg.Up = up
	if err := r.h.Update(cfg); err != nil {
		r.t.Fatal(err)
	}
	q := r.sys.queue(name)
	q.keep = true
	return q
}

func TestDemuxOrder(t *testing.T) {
	r := newRig(t)
	exact := r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77})
	sess := r.add(Config{Name: "erspan1", Up: true, Monitor: true, Src: local, VNetID: 77})
	all := r.add(Config{Name: "erspan2", Up: true, Monitor: true, Src: local, VNetID: NoSession})
	sock := r.sys.socket(4)
	if sock == nil {
		t.Fatal("no IPv4 socket opened for up IPv4 interfaces")
	}
	if r.sys.socket(6) != nil {
		t.Fatal("an IPv6 socket was opened with no IPv6 interface")
	}
	f1, f2, f3, f4 := frame(1, 60), frame(2, 60), frame(3, 60), frame(4, 60)
	sock.inject(
		Message{Src: remote, Dst: local, GRE: gre(t, typeII(77), f1)},                            // exact
		Message{Src: remote2, Dst: local, GRE: gre(t, typeII(77), f2)},                           // session-only
		Message{Src: remote, Dst: local, GRE: gre(t, typeII(5), f3)},                             // catch-all
		Message{Src: remote, Dst: local, GRE: gre(t, erspan.Packet{Type: erspan.TypeI}, f4)},     // Type I: catch-all only
		Message{Src: remote, Dst: netip.MustParseAddr("192.0.2.9"), GRE: gre(t, typeII(77), f1)}, // unmatched
	)
	check := func(name string, q *memQueue, want ...[]byte) {
		t.Helper()
		got := q.take()
		if len(got) != len(want) {
			t.Fatalf("%s got %d frames, want %d", name, len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Errorf("%s frame %d differs", name, i)
			}
		}
	}
	check("exact", exact, f1)
	check("session-only", sess, f2)
	check("catch-all", all, f3, f4)
	if c := r.h.DaemonCounters(); c.Unmatched != 1 || c.RxPackets != 5 {
		t.Errorf("daemon counters %+v, want 1 unmatched of 5", c)
	}
	if c := r.h.Counters("erspan2"); c.RxPackets != 2 || c.TypeI != 1 || c.TypeII != 1 || c.RxBytes != 120 {
		t.Errorf("catch-all counters %+v", c)
	}
	// Receivers count for themselves; what a stopped one counted stays.
	for _, name := range []string{"erspan0", "erspan1", "erspan2"} {
		if err := r.h.Destroy(name); err != nil {
			t.Fatal(err)
		}
	}
	if len(r.h.recv) != 0 {
		t.Fatalf("%d receivers left with no interface", len(r.h.recv))
	}
	if c := r.h.DaemonCounters(); c.Unmatched != 1 || c.RxPackets != 5 {
		t.Errorf("daemon counters after the receiver stopped %+v, want 1 unmatched of 5", c)
	}
}

// A batch of interleaved sessions and sources: the receiver looks up
// and counts once per run of packets with the same addresses and session
// (receiver.cur); every packet must still land on its interface and flow,
// in sequence order, whatever the runs.
func TestRunsInBatch(t *testing.T) {
	r := newRig(t)
	exact := r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77})
	sess := r.add(Config{Name: "erspan1", Up: true, Monitor: true, Src: local, VNetID: 5})
	sock := r.sys.socket(4)
	msg := func(src netip.Addr, typ erspan.Type, session uint16, seq uint32) Message {
		p := erspan.Packet{Type: typ, HasSeq: true, Session: session, Seq: seq}
		return Message{Src: src, Dst: local, GRE: gre(t, p, frame(byte(seq), 64))}
	}
	sock.inject(
		msg(remote, erspan.TypeII, 77, 1),
		msg(remote, erspan.TypeII, 77, 2),
		msg(remote2, erspan.TypeIII, 5, 1), // erspan1 between two runs of erspan0
		msg(remote, erspan.TypeII, 5, 1),   // erspan1's session from another source
		msg(remote, erspan.TypeII, 77, 4),  // 3 is missing: a gap
		msg(remote, erspan.TypeII, 99, 1),  // nobody's: unmatched
		msg(remote, erspan.TypeII, 77, 5),
		msg(remote2, erspan.TypeII, 5, 2), // same session, another type
		msg(remote, erspan.TypeII, 77, 3), // the missing one, late
	)
	// The next batch begins a run of its own.
	sock.inject(msg(remote, erspan.TypeII, 77, 6), msg(remote2, erspan.TypeII, 5, 3))
	if n := len(exact.take()); n != 6 {
		t.Errorf("erspan0 got %d frames, want 6", n)
	}
	if n := len(sess.take()); n != 4 {
		t.Errorf("erspan1 got %d frames, want 4", n)
	}
	if c := r.h.Counters("erspan0"); c.RxPackets != 6 || c.RxBytes != 6*64 || c.TypeII != 6 || c.TypeIII != 0 {
		t.Errorf("erspan0 counters %+v, want 6 Type II frames of 64 bytes", c)
	}
	if c := r.h.Counters("erspan1"); c.RxPackets != 4 || c.TypeII != 3 || c.TypeIII != 1 {
		t.Errorf("erspan1 counters %+v, want 3 Type II and 1 Type III frames", c)
	}
	if c := r.h.DaemonCounters(); c.Unmatched != 1 || c.RxPackets != 11 {
		t.Errorf("daemon counters %+v, want 1 unmatched of 11", c)
	}
	want := map[string][]Flow{
		"erspan0": {{Source: remote, Session: 77, Packets: 6, Bytes: 6 * 64, LastSeq: 6, Gaps: 1, Reordered: 1}},
		"erspan1": {
			{Source: remote, Session: 5, Packets: 1, Bytes: 64, LastSeq: 1},
			{Source: remote2, Session: 5, Packets: 3, Bytes: 3 * 64, LastSeq: 3},
		},
	}
	for name, w := range want {
		f, overflow := r.h.Flows(name)
		if !slices.Equal(f, w) || overflow != 0 {
			t.Errorf("%s flows %+v (overflow %d), want %+v", name, f, overflow, w)
		}
	}
}

// TestTAPWriteErrors: frames whose TAP write fails (the TAP removed under
// erspand) count as rx_errors of their interface, not as rx_packets, in
// runs interleaved with another interface's frames that are delivered.
func TestTAPWriteErrors(t *testing.T) {
	r := newRig(t)
	gone := r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77})
	ok := r.add(Config{Name: "erspan1", Up: true, Monitor: true, Src: local, VNetID: 5})
	gone.mu.Lock()
	gone.writeErr = unix.EBADFD // its writes fail from now on
	gone.mu.Unlock()
	sock := r.sys.socket(4)
	msg := func(session uint16, seq uint32) Message {
		p := erspan.Packet{Type: erspan.TypeII, HasSeq: true, Session: session, Seq: seq}
		return Message{Src: remote, Dst: local, GRE: gre(t, p, frame(byte(seq), 64))}
	}
	sock.inject(msg(77, 1), msg(77, 2), msg(5, 1), msg(5, 2), msg(77, 3))
	sock.inject(msg(77, 4))
	if c := r.h.Counters("erspan0"); c.RxErrors != 4 || c.RxPackets != 0 {
		t.Errorf("erspan0 counters %+v, want 4 rx_errors and no rx_packets", c)
	}
	if c := r.h.Counters("erspan1"); c.RxErrors != 0 || c.RxPackets != 2 {
		t.Errorf("erspan1 counters %+v, want 2 rx_packets and no rx_errors", c)
	}
	if n := len(ok.take()); n != 2 {
		t.Errorf("erspan1 got %d frames, want 2", n)
	}
}

// TestKernelDropsKept: the kernel drops of a receive socket stay in the
// daemon's count after the socket closes (its last interface down) and
// add to those of the socket that replaces it.
func TestKernelDropsKept(t *testing.T) {
	r := newRig(t)
	cfg := Config{Name: "erspan0", Monitor: true, Src: local, Dst: remote, VNetID: 77}
	r.add(cfg)
	// Up (a new socket, which then drops some), down (it closes), ...
	for _, step := range []struct {
		up          bool
		drops, want uint64
		what        string
	}{
		{true, 7, 7, "with the socket open"},
		{false, 0, 7, "after the socket closed"},
		{true, 2, 9, "with a new socket that dropped 2"},
		{false, 0, 9, "after the second socket closed"}, // its drops add to the first's
	} {
		cfg.Up = step.up
		if err := r.h.Update(cfg); err != nil {
			t.Fatal(err)
		}
		if step.up {
			r.sys.socket(4).drops = step.drops
		}
		if d := r.h.DaemonCounters().KernelDrops; d != step.want {
			t.Errorf("kernel drops %d %s, want %d", d, step.what, step.want)
		}
	}
}

// flushProbe is a discardWriter that records, at each Flush, how many
// frames it writes and erspan0's type_ii count at that moment.
type flushProbe struct {
	*discardWriter
	h               *Host
	frames, counted []uint64
}

func (w *flushProbe) Flush() []error {
	w.frames = append(w.frames, uint64(w.n))
	w.counted = append(w.counted, w.h.Counters("erspan0").TypeII)
	return w.discardWriter.Flush()
}

// TestPairForgottenAfterBatch: the receiver keeps the exact tunnels of
// the last packet's address pair (receiver.pair) within a batch only: the
// next batch, looked up in a table where the session moved to another
// interface, goes to that one.
func TestPairForgottenAfterBatch(t *testing.T) {
	r := newRig(t)
	q0 := r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77})
	q1 := r.add(Config{Name: "erspan1", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 78})
	table := func() *demuxTable { return r.h.recv[recvKey{family: 4}].table.Load() }
	rc := newReceiver(r.h, nil)
	batch := []Message{{Src: remote, Dst: local, GRE: gre(t, typeII(77), frame(1, 64))}}
	rc.handle(table(), batch)
	for _, c := range []Config{
		{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 79},
		{Name: "erspan1", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77},
	} {
		if err := r.h.Update(c); err != nil {
			t.Fatal(err)
		}
	}
	rc.handle(table(), batch)
	if n0, n1 := len(q0.take()), len(q1.take()); n0 != 1 || n1 != 1 {
		t.Errorf("erspan0 got %d frames, erspan1 %d; want one each (session 77 moved between the batches)", n0, n1)
	}
}

// TestRunCountedBeforeWrite: a socket batch longer than the writer takes
// is written in two flushes, and before each the run's packets are
// counted on the interface (whoever sees a frame on the TAP finds it
// counted), the mid-batch flush included.
func TestRunCountedBeforeWrite(t *testing.T) {
	r := newRig(t)
	r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77}).keep = false
	rc := newReceiver(r.h, nil)
	w := &flushProbe{discardWriter: newDiscardWriter(rxWriteBatch), h: r.h}
	rc.out = w
	msgs := make([]Message, rxWriteBatch+10)
	for i := range msgs {
		msgs[i] = Message{Src: remote, Dst: local, GRE: gre(t, typeII(77), frame(1, 64))}
	}
	rc.handle(r.h.recv[recvKey{family: 4}].table.Load(), msgs)
	if len(w.frames) != 2 {
		t.Fatalf("%d flushes for a batch of %d, want 2", len(w.frames), len(msgs))
	}
	var written uint64
	for i := range w.frames {
		written += w.frames[i]
		if w.counted[i] < written {
			t.Errorf("flush %d: %d frames written so far, %d counted before it", i, written, w.counted[i])
		}
	}
}

// TestDestroyLeftBehind: a TAP that cannot be removed is named in the
// error with the command that removes it, in its namespace.
func TestDestroyLeftBehind(t *testing.T) {
	for _, c := range []struct{ ns, cmd string }{
		{"", "ip link del erspan0"}, {"red", "ip -n red link del erspan0"},
	} {
		r := newRig(t)
		r.add(Config{Name: "erspan0", Up: true, Src: local, Dst: remote, VNetID: 1, Rdomain: c.ns})
		r.sys.mu.Lock()
		r.sys.deleteErr = unix.EBUSY
		r.sys.mu.Unlock()
		err := r.h.Destroy("erspan0")
		if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "(remove it with "+c.cmd+")") {
			t.Errorf("rdomain %q: destroy: %v, want EBUSY naming %q", c.ns, err, c.cmd)
		}
	}
}

// TestGREAllow: with net.inet.gre.allow=0 every GRE packet of a batch is
// dropped and counted as disallowed, none delivered; =1 restores.
func TestGREAllow(t *testing.T) {
	r := newRig(t)
	q := r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77})
	sock := r.sys.socket(4)
	msg := Message{Src: remote, Dst: local, GRE: gre(t, typeII(77), frame(1, 64))}
	r.h.SetGREAllow(false)
	sock.inject(msg, msg, msg)
	if n := len(q.take()); n != 0 {
		t.Errorf("%d frames delivered with net.inet.gre.allow=0", n)
	}
	if c := r.h.DaemonCounters(); c.Disallowed != 3 || c.RxPackets != 3 {
		t.Errorf("daemon counters %+v, want 3 of 3 disallowed", c)
	}
	r.h.SetGREAllow(true)
	sock.inject(msg)
	if n := len(q.take()); n != 1 {
		t.Errorf("%d frames delivered after net.inet.gre.allow=1, want 1", n)
	}
}

func TestCaptureOnlyWithoutMonitor(t *testing.T) {
	r := newRig(t)
	exact := r.add(Config{Name: "erspan0", Up: true, Src: local, Dst: remote, VNetID: 1})
	all := r.add(Config{Name: "erspan1", Up: true, Src: local, VNetID: NoSession})
	sock := r.sys.socket(4)
	trunc := typeII(1)
	trunc.Truncated = true
	sock.inject(
		Message{Src: remote, Dst: local, GRE: gre(t, typeII(1), frame(1, 64))}, // delivered to the stack
		Message{Src: remote, Dst: local, GRE: gre(t, trunc, frame(2, 64))},     // T bit: capture only
		Message{Src: remote, Dst: local, GRE: gre(t, typeII(2), frame(3, 64))}, // catch-all: capture only
	)
	if n := len(exact.take()); n != 1 {
		t.Errorf("exact without monitor delivered %d frames, want 1", n)
	}
	if n := len(all.take()); n != 0 {
		t.Errorf("catch-all without monitor delivered %d frames, want 0", n)
	}
	if c := r.h.Counters("erspan0"); c.RxTruncated != 1 || c.RxCaptureOnly != 1 {
		t.Errorf("exact counters %+v", c)
	}
	if c := r.h.Counters("erspan1"); c.RxCaptureOnly != 1 {
		t.Errorf("catch-all counters %+v", c)
	}
	// With monitor mode, all three reach the TAP (and so tcpdump).
	for _, c := range []Config{
		{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 1},
		{Name: "erspan1", Up: true, Monitor: true, Src: local, VNetID: NoSession},
	} {
		if err := r.h.Update(c); err != nil {
			t.Fatal(err)
		}
	}
	sock.inject(
		Message{Src: remote, Dst: local, GRE: gre(t, trunc, frame(2, 64))},
		Message{Src: remote, Dst: local, GRE: gre(t, typeII(2), frame(3, 64))},
	)
	if len(exact.take()) != 1 || len(all.take()) != 1 {
		t.Error("monitor mode did not deliver capture-only frames")
	}
	if c := r.h.Counters("erspan0"); c.RxTruncated != 2 {
		t.Errorf("truncated count %d, want 2", c.RxTruncated)
	}
}

func TestBadPacketsCounted(t *testing.T) {
	r := newRig(t)
	q := r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, VNetID: NoSession})
	sock := r.sys.socket(4)
	good := gre(t, typeII(3), frame(9, 64))
	ft := gre(t, erspan.Packet{Type: erspan.TypeIII, Session: 3, FrameType: 2}, frame(9, 64))
	short := gre(t, typeII(3), frame(9, 64)[:13])
	badVer := append([]byte(nil), good...)
	badVer[1] |= 1
	sock.inject(
		Message{Src: remote, Dst: local, GRE: good[:6]},
		Message{Src: remote, Dst: local, GRE: badVer},
		Message{Src: remote, Dst: local, GRE: ft},
		Message{Src: remote, Dst: local, GRE: short},
		Message{Err: erspan.ErrIPHeader},
		Message{Src: remote, Dst: local, GRE: good},
	)
	if got := q.take(); len(got) != 1 {
		t.Fatalf("%d frames delivered, want only the good one", len(got))
	}
	d := r.h.DaemonCounters()
	for e, want := range map[erspan.Error]uint64{erspan.ErrShort: 1, erspan.ErrGREVersion: 1, erspan.ErrFrameType: 1, erspan.ErrInnerShort: 1, erspan.ErrIPHeader: 1} {
		if d.Drops[e] != want {
			t.Errorf("drops[%s] = %d, want %d", e.Name(), d.Drops[e], want)
		}
	}
	if c := r.h.Counters("erspan0"); c.RxFrameType != 1 || c.RxInnerShort != 1 || c.RxPackets != 1 {
		t.Errorf("interface counters %+v", c)
	}
}

func TestSocketsFollowFamilies(t *testing.T) {
	r := newRig(t)
	r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local6, Dst: remote6, VNetID: 1})
	s6 := r.sys.socket(6)
	if s6 == nil || r.sys.socket(4) != nil {
		t.Fatal("want exactly an IPv6 socket")
	}
	if err := r.h.Update(Config{Name: "erspan0", Monitor: true, Src: local6, Dst: remote6, VNetID: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s6.closed:
	default:
		t.Error("IPv6 socket left open with no IPv6 interface up")
	}
	if err := r.h.Destroy("erspan0"); err != nil {
		t.Fatal(err)
	}
	if err := r.h.Destroy("erspan0"); !errors.Is(err, unix.ENXIO) {
		t.Errorf("destroy twice: %v", err)
	}
}

// TestDestroyLinkGone: an interface whose TAP somebody removed behind
// erspand's back (ip link del) is destroyed all the same, and its name can
// be created again; before, Destroy failed with ENXIO after forgetting the
// interface, and the name stayed taken in the registry for good.
func TestDestroyLinkGone(t *testing.T) {
	r := newRig(t)
	r.add(Config{Name: "erspan0", Up: true, Src: local, Dst: remote, VNetID: 1})
	if err := r.sys.DeleteTAP("", "erspan0"); err != nil { // ip link del erspan0
		t.Fatal(err)
	}
	if err := r.h.Destroy("erspan0"); err != nil {
		t.Fatalf("destroy an interface whose TAP is gone: %v", err)
	}
	r.add(Config{Name: "erspan0", Up: true, Src: local, Dst: remote, VNetID: 1})
}

func TestCreateForeignLink(t *testing.T) {
	r := newRig(t)
	r.sys.foreign["erspan0"] = true
	if _, err := r.h.Create(Config{Name: "erspan0", VNetID: NoSession}); !errors.Is(err, unix.EEXIST) {
		t.Errorf("got %v, want EEXIST", err)
	}
}

// The receive path must not allocate per packet (DEVELOPERS.md); checked
// here, not only in a benchmark, with one packet down every branch of
// input: each lookup rule, each type, the T bit, capture-only without
// monitor, the drops charged to an interface, the daemon-wide ones and a
// packet no interface takes; and with a batch dropped whole by
// net.inet.gre.allow=0 (handle's other branch).
func TestInputAllocs(t *testing.T) {
	r := newRig(t)
	for _, cfg := range []Config{
		{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77}, // exact
		{Name: "erspan1", Up: true, Monitor: true, Src: local, VNetID: 5},               // session-only
		{Name: "erspan2", Up: true, Src: local, VNetID: NoSession},                      // catch-all, no monitor
	} {
		r.add(cfg)
		r.sys.queue(cfg.Name).keep = false
	}
	typeIII := func(session uint16) erspan.Packet {
		return erspan.Packet{Type: erspan.TypeIII, HasSeq: true, Session: session}
	}
	truncated, ft := typeII(77), typeIII(5)
	truncated.Truncated, ft.FrameType = true, 2
	msgs := []Message{
		{Src: remote, Dst: local, GRE: gre(t, typeII(77), frame(1, 64))},                         // exact
		{Src: remote2, Dst: local, GRE: gre(t, typeIII(5), frame(2, 64))},                        // session-only
		{Src: remote2, Dst: local, GRE: gre(t, erspan.Packet{Type: erspan.TypeI}, frame(3, 64))}, // catch-all, Type I, capture-only
		{Src: remote, Dst: local, GRE: gre(t, truncated, frame(4, 64))},                          // T bit, monitor
		{Src: remote2, Dst: local, GRE: gre(t, ft, frame(6, 64))},                                // FT != 0, charged to erspan1
		{Src: remote, Dst: local, GRE: gre(t, typeII(77), frame(7, 10))},                         // inner frame too short
		{Src: remote, Dst: local, GRE: []byte{0, 0}},                                             // decode error
		{Src: remote, Dst: local, Err: erspan.ErrIPHeader},                                       // socket's error
		{Src: remote, Dst: remote2, GRE: gre(t, typeII(77), frame(8, 64))},                       // unmatched: nobody's local address
	}
	tab := r.h.recv[recvKey{family: 4}].table.Load()
	rc := newReceiver(r.h, nil)
	rc.handle(tab, msgs) // the writer's slices grow once
	allocs := testing.AllocsPerRun(1000, func() { rc.handle(tab, msgs) })
	if allocs != 0 {
		t.Errorf("%v allocations per batch, want 0", allocs)
	}
	r.h.SetGREAllow(false)
	allocs = testing.AllocsPerRun(1000, func() { rc.handle(tab, msgs) })
	r.h.SetGREAllow(true)
	if allocs != 0 {
		t.Errorf("%v allocations per batch with net.inet.gre.allow=0, want 0", allocs)
	}
	// Every branch was taken (the counters say so), or the test would
	// measure less than it claims.
	c0, c1, c2 := r.h.Counters("erspan0"), r.h.Counters("erspan1"), r.h.Counters("erspan2")
	var d DaemonCounters // rc is not the host's: its own counters
	rc.stats.addTo(&d)
	for what, n := range map[string]uint64{
		"decode error": d.Drops[erspan.ErrShort], "socket's error": d.Drops[erspan.ErrIPHeader],
		"exact": c0.TypeII, "session-only": c1.TypeIII, "catch-all Type I": c2.TypeI,
		"capture-only without monitor": c2.RxCaptureOnly, "T bit": c0.RxTruncated,
		"frame type": c1.RxFrameType, "inner short": c0.RxInnerShort,
		"unmatched": d.Unmatched, "net.inet.gre.allow=0": d.Disallowed,
	} {
		if n == 0 {
			t.Errorf("%s: no packet counted: the branch was not taken", what)
		}
	}

	// The branches of a full receive: a batch longer than the writer
	// takes (flushed mid-batch), a TAP whose writes fail, and a source
	// beyond maxFlows (counted in the overflow). erspan2, the catch-all,
	// gets more (source, session) flows than it tracks first.
	r.add(Config{Name: "erspan3", Up: true, Monitor: true, Src: local, Dst: remote2, VNetID: 9})
	q3 := r.sys.queue("erspan3")
	q3.mu.Lock()
	q3.writeErr = unix.EBADFD
	q3.mu.Unlock()
	tab = r.h.recv[recvKey{family: 4}].table.Load()
	var fill []Message
	for _, src := range []netip.Addr{remote, remote2} {
		for s := uint16(100); s < 1024; s++ {
			fill = append(fill, Message{Src: src, Dst: local, GRE: gre(t, typeII(s), frame(9, 64))})
		}
	}
	for i := 0; i < len(fill); i += rxWriteBatch {
		rc.handle(tab, fill[i:min(i+rxWriteBatch, len(fill))])
	}
	var full []Message
	for range rxWriteBatch + 10 {
		full = append(full, msgs[0]) // erspan0
	}
	full = append(full,
		Message{Src: remote2, Dst: local, GRE: gre(t, typeII(9), frame(10, 64))}, // erspan3, write fails
		Message{Src: remote, Dst: local, GRE: gre(t, typeII(99), frame(11, 64))}) // erspan2, a flow beyond maxFlows
	rc.handle(tab, full)
	allocs = testing.AllocsPerRun(100, func() { rc.handle(tab, full) })
	if allocs != 0 {
		t.Errorf("%v allocations per batch of %d (writer full, write errors, flow overflow), want 0", allocs, len(full))
	}
	_, overflow := r.h.Flows("erspan2")
	for what, n := range map[string]uint64{
		"failed TAP write": r.h.Counters("erspan3").RxErrors, "flow overflow": overflow,
	} {
		if n == 0 {
			t.Errorf("%s: no packet counted: the branch was not taken", what)
		}
	}
}

// discardWriter is a FrameWriter that takes frames and writes none, every
// one a success: the receive benchmarks measure the receive path, not the
// in-memory TAP (memQueue takes a mutex per frame).
type discardWriter struct {
	n    int
	errs []error // all nil
}

func newDiscardWriter(batch int) *discardWriter { return &discardWriter{errs: make([]error, batch)} }

func (w *discardWriter) Add(Queue, []byte) bool {
	if w.n == len(w.errs) {
		return false
	}
	w.n++
	return true
}

func (w *discardWriter) Flush() []error {
	errs := w.errs[:w.n]
	w.n = 0
	return errs
}

func (w *discardWriter) Close() error { return nil }

// benchHost is a Host with erspan0 taking session 77 from remote to
// local, its IPv4 demux table and a receiver to run batches through,
// which writes into a discardWriter.
func benchHost(b *testing.B) (*Host, *demuxTable, *receiver) {
	h := NewHost(newMemSystem(), nil)
	b.Cleanup(func() { h.Close() })
	if _, err := h.Create(Config{Name: "erspan0", VNetID: NoSession, MTU: 1500}); err != nil {
		b.Fatal(err)
	}
	if err := h.Update(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77}); err != nil {
		b.Fatal(err)
	}
	rc := newReceiver(h, nil)
	rc.out = newDiscardWriter(rxWriteBatch)
	return h, h.recv[recvKey{family: 4}].table.Load(), rc
}

func BenchmarkInput(b *testing.B) {
	_, tab, rc := benchHost(b)
	msgs := []Message{{Src: remote, Dst: local, GRE: gre(b, typeII(77), frame(1, 64))}}
	b.ReportAllocs()
	for b.Loop() {
		rc.handle(tab, msgs)
	}
}

// BenchmarkInputBatch is the receive path as erspand runs it: batches of 64
// Type II packets of one source and session, sequence numbers advancing
// as a switch sends them. ns/op is per batch, ns/packet per packet.
func BenchmarkInputBatch(b *testing.B) {
	const batch = 64
	h, tab, rc := benchHost(b)
	msgs := make([]Message, batch)
	for i := range msgs {
		p := typeII(77)
		p.Seq = uint32(i + 1)
		msgs[i] = Message{Src: remote, Dst: local, GRE: gre(b, p, frame(byte(i), 64))}
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if n > 0 {
			// The GRE sequence number of Type II is at offset 4.
			for i := range msgs {
				binary.BigEndian.PutUint32(msgs[i].GRE[4:], uint32(n+i+1))
			}
		}
		rc.handle(tab, msgs)
		n += batch
	}
	b.StopTimer()
	if c := h.Counters("erspan0"); c.RxPackets != uint64(n) {
		b.Fatalf("%d frames delivered, want %d", c.RxPackets, n)
	}
	if f, _ := h.Flows("erspan0"); len(f) != 1 || f[0].Lost != 0 || f[0].Duplicates != 0 || f[0].Reordered != 0 {
		b.Fatalf("flows %+v, want one without loss, duplicates or reordering", f)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/packet")
}

// BenchmarkInputSpread is the receive path with every packet of a batch
// for another of 1024 interfaces (one session each), as the bench's
// "decap, 1024 ifs, all": no two packets in a row share a run. ns/packet
// is per packet.
func BenchmarkInputSpread(b *testing.B) {
	const nifs, batch = 1024, 64
	sys := newMemSystem()
	h := NewHost(sys, nil)
	b.Cleanup(func() { h.Close() })
	for i := range nifs {
		name := fmt.Sprintf("erspan%d", i)
		if _, err := h.Create(Config{Name: name, VNetID: NoSession, MTU: 1500}); err != nil {
			b.Fatal(err)
		}
		if err := h.Update(Config{Name: name, Up: true, Monitor: true, Src: local, Dst: remote, VNetID: i}); err != nil {
			b.Fatal(err)
		}
		sys.queue(name).keep = false
	}
	msgs := make([]Message, nifs)
	for i := range msgs {
		p := typeII(uint16(i))
		p.Seq = 1
		msgs[i] = Message{Src: remote, Dst: local, GRE: gre(b, p, frame(byte(i), 64))}
	}
	tab := h.recv[recvKey{family: 4}].table.Load()
	rc := newReceiver(h, nil)
	rc.out = newDiscardWriter(rxWriteBatch)
	// Every flow made before the clock starts: the flow tables grow
	// (a map copied per new source) once, not per frame.
	for start := 0; start < nifs; start += batch {
		rc.handle(tab, msgs[start:start+batch])
	}
	b.ReportAllocs()
	n, seq := 0, uint32(1)
	for b.Loop() {
		start := n % nifs
		if start == 0 {
			seq++
			for i := range msgs {
				binary.BigEndian.PutUint32(msgs[i].GRE[4:], seq)
			}
		}
		rc.handle(tab, msgs[start:start+batch])
		n += batch
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/packet")
}

// tables is what the host has published: each receiver's place and the
// demux table it reads.
func (r *rig) tables() map[recvKey]*demuxTable {
	out := map[recvKey]*demuxTable{}
	for k, rc := range r.h.recv {
		out[k] = rc.table.Load()
	}
	return out
}

// openSocket returns the in-memory socket of place k, failing the test
// when none was opened or it was closed since (inject would then wait for
// a receiver that is gone).
func (r *rig) openSocket(k recvKey) *memSocket {
	r.t.Helper()
	r.sys.mu.Lock()
	s := r.sys.socks[k]
	r.sys.mu.Unlock()
	if s == nil {
		r.t.Fatalf("no socket opened for %+v", k)
	}
	select {
	case <-s.closed:
		r.t.Fatalf("the socket for %+v is closed", k)
	default:
	}
	return s
}

// TestRebuildOnlyForDemux: a setting the demux tables do not hold (mtu,
// ttl), or any setting of an interface that is down, keeps the published
// tables; a change of each setting they hold (demuxChanged) replaces them,
// and the interface then takes the packets of its new configuration. The
// changes go through Host.Update directly: ifconfig refuses most of them
// on an up interface (EBUSY), the Host does not. A rebuild walks every
// interface, so one per setting made creating n interfaces n².
func TestRebuildOnlyForDemux(t *testing.T) {
	t.Run("unheld", func(t *testing.T) {
		r := newRig(t)
		r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77, MTU: 1500})
		before := r.tables()
		if err := r.h.Update(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 77, MTU: 1400, TTL: 9}); err != nil {
			t.Fatal(err)
		}
		r.add(Config{Name: "erspan1", Src: local, VNetID: 5, MTU: 1500}) // down
		if !maps.Equal(r.tables(), before) {
			t.Error("mtu and ttl of an up interface, or a down interface made, rebuilt the demux tables")
		}
	})
	local2 := netip.MustParseAddr("192.0.2.4")
	base := Config{Name: "erspan0", Up: true, Src: local, Dst: remote, VNetID: 77, MTU: 1500}
	truncated := typeII(77)
	truncated.Truncated = true
	for _, c := range []struct {
		field  string
		change func(*Config)
		// the socket that must deliver pkt to erspan0 afterwards
		place recvKey
		pkt   Message
	}{
		// From down to up: the one change of a down interface that
		// rebuilds.
		{"Up", func(c *Config) { c.Up = true }, recvKey{family: 4},
			Message{Src: remote, Dst: local, GRE: gre(t, typeII(77), frame(1, 64))}},
		{"Src", func(c *Config) { c.Src = local2 }, recvKey{family: 4},
			Message{Src: remote, Dst: local2, GRE: gre(t, typeII(77), frame(1, 64))}},
		{"Dst", func(c *Config) { c.Dst = remote2 }, recvKey{family: 4},
			Message{Src: remote2, Dst: local, GRE: gre(t, typeII(77), frame(1, 64))}},
		{"VNetID", func(c *Config) { c.VNetID = 78 }, recvKey{family: 4},
			Message{Src: remote, Dst: local, GRE: gre(t, typeII(78), frame(1, 64))}},
		// A truncated frame reaches the TAP only in monitor mode.
		{"Monitor", func(c *Config) { c.Monitor = true }, recvKey{family: 4},
			Message{Src: remote, Dst: local, GRE: gre(t, truncated, frame(1, 64))}},
		{"TunnelDomain", func(c *Config) { c.TunnelDomain = "tun" }, recvKey{ns: "tun", family: 4},
			Message{Src: remote, Dst: local, GRE: gre(t, typeII(77), frame(1, 64))}},
		{"TunnelDev", func(c *Config) { c.TunnelDev = "eth0" }, recvKey{dev: "eth0"},
			Message{Src: remote, Dst: local, GRE: gre(t, typeII(77), frame(1, 64))}},
	} {
		t.Run(c.field+"/up", func(t *testing.T) {
			r := newRig(t)
			cfg := base
			if c.field == "Up" {
				cfg.Up = false
			}
			q := r.add(cfg)
			before := r.tables()
			c.change(&cfg)
			if err := r.h.Update(cfg); err != nil {
				t.Fatal(err)
			}
			if maps.Equal(r.tables(), before) {
				t.Errorf("%s changed on an up interface: the demux tables were not rebuilt", c.field)
			}
			r.openSocket(c.place).inject(c.pkt)
			if got := q.take(); len(got) != 1 {
				t.Errorf("%s changed: %d frames delivered for the new configuration, want 1 (daemon counters %+v)",
					c.field, len(got), r.h.DaemonCounters())
			}
		})
		if c.field == "Up" {
			continue
		}
		t.Run(c.field+"/down", func(t *testing.T) {
			r := newRig(t)
			// Another interface, up, so that there are tables to
			// replace.
			r.add(Config{Name: "erspan1", Up: true, Src: local, Dst: remote, VNetID: 5, MTU: 1500})
			cfg := base
			cfg.Up = false
			r.add(cfg)
			before := r.tables()
			c.change(&cfg)
			if err := r.h.Update(cfg); err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(r.tables(), before) {
				t.Errorf("%s changed on a down interface rebuilt the demux tables", c.field)
			}
		})
	}
}

// TestRingRefusedLogged: a GRE receive socket that reads with recvmmsg
// because the kernel refused its eBPF ring says so in the log, once, with
// the kernel's reason, the socket it is, and how to silence it.
func TestRingRefusedLogged(t *testing.T) {
	sys := newMemSystem()
	sys.ringErr = fmt.Errorf("create eBPF map erspan_ring: %w", unix.EPERM)
	h, logged := newLoggedHost(sys)
	defer h.Close()
	for _, name := range []string{"erspan0", "erspan1"} {
		if _, err := h.Create(Config{Name: name, Up: true, Src: netip.MustParseAddr("192.0.2.2"), VNetID: 7, MTU: 1500, TunnelDomain: "blue"}); err != nil {
			t.Fatal(err)
		}
	}
	logs := logged()
	if len(logs) != 1 || !strings.Contains(logs[0], "IPv4 GRE receive socket in network namespace blue reads with recvmmsg") ||
		!strings.Contains(logs[0], "operation not permitted") || !strings.Contains(logs[0], "--rx-ring=false") {
		t.Errorf("logged %q, want one line naming the socket, the kernel's reason and the flag", logs)
	}
}

// TestReceiveErrorsLogged: a receive socket that fails batch after batch
// with one error costs one log line, then one when it works again that
// counts the failures not logged.
func TestReceiveErrorsLogged(t *testing.T) {
	sys := newMemSystem()
	h, logged := newLoggedHost(sys)
	defer h.Close()
	if _, err := h.Create(Config{Name: "erspan0", Up: true, Src: netip.MustParseAddr("192.0.2.2"), VNetID: 7, MTU: 1500}); err != nil {
		t.Fatal(err)
	}
	s := sys.socket(4)
	s.inject() // a batch read without error, then its barrier
	if logs := logged(); len(logs) != 0 {
		t.Fatalf("logged %q for a receiver that has not failed, want nothing", logs)
	}
	for range 3 {
		s.errs <- unix.ENOBUFS
	}
	s.inject()
	logs := logged()
	if len(logs) != 2 || !strings.Contains(logs[0], "GRE receive: "+unix.ENOBUFS.Error()) ||
		!strings.Contains(logs[1], "GRE receive works again") || !strings.Contains(logs[1], "2 more batches failed") {
		t.Errorf("logged %q, want the first failure, then the recovery with the 2 failures not logged", logs)
	}
}

// newLoggedHost returns a Host on sys whose error lines are kept, and a
// function returning those logged so far.
func newLoggedHost(sys System) (*Host, func() []string) {
	var mu sync.Mutex
	var logs []string
	h := NewHost(sys, &Logger{Errorf: func(f string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		logs = append(logs, fmt.Sprintf(f, a...))
	}})
	return h, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(logs)
	}
}
