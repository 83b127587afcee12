package tunnel

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// waitSent waits (bounded) until s has n packets and returns them.
func waitSent(t *testing.T, s *memSender, n int) ([][]byte, []uint8) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		if len(s.pkts) >= n {
			p, tos := s.pkts, s.tos
			s.mu.Unlock()
			return p, tos
		}
		s.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("sender has fewer than %d packets after 5s", n)
	return nil, nil
}

// waitCounters waits until erspan0's counters satisfy ok: the transmit
// loop counts a batch after SendBatch returns, which is after waitSent saw
// its packets.
func waitCounters(t *testing.T, h *Host, ok func(IfCounters) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok(h.Counters("erspan0")) {
		if time.Now().After(deadline) {
			t.Fatalf("counters %+v after 5s", h.Counters("erspan0"))
		}
		time.Sleep(time.Millisecond)
	}
}

func tagged(pcp byte, n int) []byte {
	f := frame(7, n)
	copy(f[12:], []byte{0x81, 0x00, pcp << 5, 42, 0x08, 0x00})
	return f
}

func TestTransmitTypeII(t *testing.T) {
	r := newRig(t)
	q := r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 300, TTL: 64, TxPrio: TxPrioPacket})
	if len(r.sys.senders) != 1 {
		t.Fatalf("%d senders, want 1", len(r.sys.senders))
	}
	s := r.sys.senders[0]
	if s.src != local || s.dst != remote || s.ttl != 64 || s.df {
		t.Errorf("sender %+v", s)
	}
	frames := [][]byte{frame(1, 60), tagged(6, 64), frame(3, 1514)}
	for _, f := range frames {
		q.send(f)
	}
	pkts, tos := waitSent(t, s, len(frames))
	wantCOS := []uint8{3, 6, 3}
	for i, pkt := range pkts {
		var p erspan.Packet
		if err := erspan.Decode(pkt, &p); err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if p.Type != erspan.TypeII || p.Version != 1 || p.Session != 300 || p.Seq != uint32(i) ||
			p.COS != wantCOS[i] || p.VLAN != 0 || p.Encap != 0 || p.Truncated || p.Index != 0 || p.GREFlags != erspan.GREFlagS {
			t.Errorf("packet %d header %+v", i, p)
		}
		if !bytes.Equal(p.Frame, frames[i]) {
			t.Errorf("packet %d frame differs", i)
		}
		if tos[i] != wantCOS[i]<<5 {
			t.Errorf("packet %d tos %#x, want %#x", i, tos[i], wantCOS[i]<<5)
		}
	}
	waitCounters(t, r.h, func(c IfCounters) bool { return c.TxPackets == 3 && c.TxBytes == 60+64+1514 })
}

func TestTransmitSettings(t *testing.T) {
	r := newRig(t)
	cfg := Config{Name: "erspan0", Up: true, Monitor: true, Src: local, Dst: remote, VNetID: 5, TTL: 64, TxPrio: 2}
	q := r.add(cfg)
	q.send(tagged(6, 64))
	_, tos := waitSent(t, r.sys.senders[0], 1)
	if tos[0] != 2<<5 {
		t.Errorf("txprio 2: tos %#x", tos[0])
	}
	// The session and txprio change on the same socket; TTL and DF need
	// a new one.
	cfg.VNetID, cfg.TxPrio = 6, 7
	cfg.Up = false
	if err := r.h.Update(cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Up, cfg.TTL, cfg.DF = true, 9, true
	if err := r.h.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if len(r.sys.senders) != 2 || !r.sys.senders[0].closed {
		t.Fatalf("want the old sender closed and a new one: %d", len(r.sys.senders))
	}
	s := r.sys.senders[1]
	if s.ttl != 9 || !s.df {
		t.Errorf("new sender %+v", s)
	}
	s.tooBig = 200
	q.send(frame(1, 1000)) // too big with DF: dropped, counted; its sequence number is a gap
	q.send(frame(2, 100))
	pkts, tos := waitSent(t, s, 1)
	var p erspan.Packet
	if err := erspan.Decode(pkts[0], &p); err != nil {
		t.Fatal(err)
	}
	if p.Session != 6 || tos[0] != 7<<5 || p.Seq != 2 {
		t.Errorf("after changes: session %d tos %#x seq %d", p.Session, tos[0], p.Seq)
	}
	waitCounters(t, r.h, func(c IfCounters) bool { return c.TxTooBig == 1 && c.TxPackets == 2 })
}

func TestTransmitNoTunnel(t *testing.T) {
	r := newRig(t)
	// A collector has no destination: what leaves it is counted, not sent.
	q := r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, VNetID: NoSession, TTL: 64})
	q.send(frame(1, 60))
	q.send(frame(2, 60)) // returns once the first has been handled
	waitCounters(t, r.h, func(c IfCounters) bool { return c.TxNoTunnel >= 1 })
	if c := r.h.Counters("erspan0"); c.TxPackets != 0 || len(r.sys.senders) != 0 {
		t.Errorf("counters %+v, senders %d", c, len(r.sys.senders))
	}
}

func TestTunnelDomainReceivers(t *testing.T) {
	r := newRig(t)
	r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, VNetID: NoSession, TunnelDomain: "sensor"})
	r.add(Config{Name: "erspan1", Up: true, Monitor: true, Src: local, VNetID: NoSession})
	if r.sys.socketIn("sensor", 4) == nil || r.sys.socket(4) == nil {
		t.Fatal("want one IPv4 socket in each namespace")
	}
	// The same addresses in two namespaces are two tunnels.
	f := frame(5, 64)
	r.sys.socketIn("sensor", 4).inject(Message{Src: remote, Dst: local, GRE: gre(t, typeII(1), f)})
	if got := r.sys.queue("erspan0").take(); len(got) != 1 {
		t.Errorf("erspan0 (tunneldomain sensor) got %d frames", len(got))
	}
	if got := r.sys.queue("erspan1").take(); len(got) != 0 {
		t.Errorf("erspan1 (default domain) got %d frames from the sensor namespace", len(got))
	}
}

func TestRdomainMove(t *testing.T) {
	r := newRig(t)
	r.add(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, VNetID: NoSession})
	if err := r.h.Update(Config{Name: "erspan0", Up: true, Monitor: true, Src: local, VNetID: NoSession, Rdomain: "ids"}); err != nil {
		t.Fatal(err)
	}
	l := r.sys.links["erspan0"]
	if r.sys.moves != 1 || !l.up || !l.monitor {
		t.Errorf("after the move: moves %d up %v monitor %v (both must be set again)", r.sys.moves, l.up, l.monitor)
	}
	if link, _ := r.h.Link("erspan0"); link.Index != 99 {
		t.Errorf("link not refreshed after the move: %+v", link)
	}
}

// The transmit path allocates nothing per frame: checked, not only
// benchmarked.
func TestEncapAllocs(t *testing.T) {
	buf := make([]byte, txHeadroom+1514)
	copy(buf[txHeadroom:], tagged(5, 1514))
	st := &txState{session: 9, txprio: TxPrioPacket}
	var p erspan.Packet
	seq := uint32(0)
	allocs := testing.AllocsPerRun(1000, func() {
		seq++
		encap(buf, 1514, st, seq, &p)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per frame", allocs)
	}
	pkt, tos := encap(buf, 1514, st, 7, &p)
	var d erspan.Packet
	if err := erspan.Decode(pkt, &d); err != nil || d.Seq != 7 || d.COS != 5 || tos != 5<<5 || len(d.Frame) != 1514 {
		t.Errorf("%v %+v tos %#x", err, d, tos)
	}
}

func BenchmarkEncap(b *testing.B) {
	buf := make([]byte, txHeadroom+64)
	copy(buf[txHeadroom:], frame(1, 64))
	st := &txState{session: 9, txprio: TxPrioPacket}
	var p erspan.Packet
	b.ReportAllocs()
	seq := uint32(0)
	for b.Loop() {
		seq++
		encap(buf, 64, st, seq, &p)
	}
}

// BenchmarkDemux looks a packet up among 1024 interfaces, one per session
// (the scale of issue 4), behind an exact, a session-only and a catch-all
// interface.
func BenchmarkDemux(b *testing.B) {
	ifs := make([]*iface, 0, 1026)
	for i := range 1024 {
		ifs = append(ifs, &iface{cfg: Config{Up: true, Src: local, Dst: remote, VNetID: i}})
	}
	ifs = append(ifs, &iface{cfg: Config{Up: true, Src: local, VNetID: 5}}, &iface{cfg: Config{Up: true, Src: local, VNetID: NoSession}})
	t := buildTable(ifs, "", "")
	// One sub-benchmark per rule of the lookup order, each one lookup per
	// op: exact tunnel, session-only collector, catch-all.
	for _, c := range []struct {
		name    string
		src     netip.Addr
		session int32
	}{{"exact", remote, 777}, {"session", remote2, 5}, {"catchall", remote2, 9}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if t.lookup(t.exact[addrPair{local, c.src}], local, c.session) == nil {
					b.Fatal("no match")
				}
			}
		})
	}
}

// TestTransmitTAPRemoved: when the kernel detaches the queue (EBADFD: the
// TAP was removed with ip link del), the transmit loop says so once, with
// the fix, and ends, rather than logging every 100 ms until destroy.
func TestTransmitTAPRemoved(t *testing.T) {
	sys := newMemSystem()
	h, logged := newLoggedHost(sys)
	defer h.Close()
	if _, err := h.Create(Config{Name: "erspan0", VNetID: NoSession, MTU: 1500}); err != nil {
		t.Fatal(err)
	}
	select { // unbuffered: taken by the transmit loop's next read
	case sys.queue("erspan0").fail <- unix.EBADFD:
	case <-time.After(2 * time.Second):
		t.Fatal("the transmit loop does not read its TAP queue")
	}
	h.mu.Lock()
	done := h.ifaces["erspan0"].txDone
	h.mu.Unlock()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("the transmit loop goes on after EBADFD")
	}
	logs := logged()
	if len(logs) != 1 || !strings.Contains(logs[0], "erspan0: the TAP was removed outside erspand") || !strings.Contains(logs[0], "destroy and create") {
		t.Errorf("logged %q, want one line naming the interface, the cause and the fix", logs)
	}
	if err := h.Destroy("erspan0"); err != nil {
		t.Errorf("destroy after the loop ended: %v", err)
	}
}

// TestErrLog: an error is logged when it differs from the last one logged,
// or errLogEvery after that line, which then counts the failures between,
// naming their error; the first success after unlogged failures reports
// them once per line, and the same error stays counted, not logged, until
// errLogEvery after its line (an error that comes and goes every other
// batch must not log a line per batch).
func TestErrLog(t *testing.T) {
	var l errLog
	t0 := time.Unix(1000, 0)
	steps := []struct {
		err  error
		at   time.Duration
		log  bool
		more string
	}{
		{unix.ENOBUFS, 0, true, ""},
		{unix.ENOBUFS, time.Second, false, ""},
		{unix.ENOBUFS, 2 * time.Second, false, ""},
		{unix.ENETUNREACH, 3 * time.Second, true, `; 2 more batches failed with "no buffer space available", not logged, in the 3s after its line`},
		{unix.ENETUNREACH, 4 * time.Second, false, ""},
		{unix.ENETUNREACH, 13 * time.Second, true, `; 1 more batches failed with "network is unreachable", not logged, in the 10s after its line`},
		{fmt.Errorf("wrapped: %w", unix.EINVAL), 14 * time.Second, true, ""},
		{fmt.Errorf("wrapped: %w", unix.EINVAL), 14*time.Second + 300*time.Millisecond, false, ""},
		{nil, 15 * time.Second, true, `; 1 more batches failed with "wrapped: invalid argument", not logged, in the 1s after its line`},
		{nil, 16 * time.Second, false, ""},        // said once
		{unix.EINVAL, 17 * time.Second, true, ""}, // another error
		{nil, 18 * time.Second, false, ""},        // nothing unlogged
		// An error that comes and goes: counted, not logged, until
		// errLogEvery after its line; the first success after failures
		// says so, once.
		{unix.EINVAL, 19 * time.Second, false, ""},
		{nil, 20 * time.Second, true, `; 1 more batches failed with "invalid argument", not logged, in the 3s after its line`},
		{unix.EINVAL, 21 * time.Second, false, ""},
		{nil, 22 * time.Second, false, ""},
		{unix.EINVAL, 23 * time.Second, false, ""},
		{unix.EINVAL, 27 * time.Second, true, `; 2 more batches failed with "invalid argument", not logged, in the 10s after its line`},
	}
	for i, s := range steps {
		var log bool
		var more string
		if s.err == nil {
			more, log = l.fine(func() time.Time { return t0.Add(s.at) })
		} else {
			log, more = l.should(s.err, t0.Add(s.at))
		}
		if log != s.log || more != s.more {
			t.Errorf("step %d (%v at %v): log %v %q, want %v %q", i, s.err, s.at, log, more, s.log, s.more)
		}
	}
}

// TestSendHint: what a send error most likely means, named with the
// tunnel's addresses and namespace.
func TestSendHint(t *testing.T) {
	host := &txState{src: local, dst: remote}
	tun := &txState{src: local, dst: remote, ns: "tun"}
	const congested = ": the link is congested, the send buffer full (erspand --tx-buffer)"
	for _, c := range []struct {
		err  error
		st   *txState
		want string
	}{
		{unix.EINVAL, host, ": is 192.0.2.2 an address of this host?"},
		{unix.EADDRNOTAVAIL, tun, ": is 192.0.2.2 an address of network namespace tun?"},
		{unix.ENETUNREACH, host, ": this host has no route to 192.0.2.1"},
		{fmt.Errorf("sendmmsg: %w", unix.EHOSTUNREACH), tun, ": network namespace tun has no route to 192.0.2.1"},
		{unix.ENOBUFS, host, congested},
		{unix.EAGAIN, tun, congested},
		{unix.EPERM, host, ""},
	} {
		if got := sendHint(c.err, c.st); got != c.want {
			t.Errorf("sendHint(%v, ns %q) = %q, want %q", c.err, c.st.ns, got, c.want)
		}
	}
}
