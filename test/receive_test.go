package test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/erspan-linux/erspan/erspan"
	"github.com/erspan-linux/erspan/ifconfig"
)

// TestDemux sends Type I, II and III (III with and without the GRE sequence
// number, with and without the platform subheader) to an exact tunnel, a
// session-only collector and a catch-all, and checks that every frame comes
// out of exactly the interface OpenBSD's erspan(4) would pick, byte for
// byte: exact (local, remote, session) first, then the session with no
// destination, then the catch-all; Type I only to the catch-all.
func TestDemux(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	eachFamily(t, func(t *testing.T, e *env, fam family) {
		L, R, O := fam.local, fam.remote, fam.otherSrc
		e.d.mustCtl("create", "erspan0", "tunnel", L.String(), R.String(), "vnetid", "77", "up")
		e.d.mustCtl("create", "erspan1", "tunneladdr", L.String(), "vnetid", "5", "up")
		e.d.mustCtl("create", "erspan2", "tunneladdr", L.String(), "up")
		exact, sess5, all := e.reader("erspan0"), e.reader("erspan1"), e.reader("erspan2")
		dl := e.deliveries(exact, sess5, all)
		n := 0
		send := func(to *packetReader, src netip.Addr, p erspan.Packet, what string) {
			n++
			label := fmt.Sprintf("%s #%d %s from %s", fam.name, n, what, src)
			f := labeledFrame(label, 64+n)
			p.Seq = uint32(n)
			e.sender.send(src, L, encap(t, p, f))
			if to != nil {
				dl.expect(to, f, label)
			} else {
				dl.describeOnly(f, label)
			}
		}

		// Phase 1: exact 77, session-only 5, catch-all.
		send(exact, R, typeII(77), "II s77")
		send(exact, R, typeIII(77, true, false), "III+S s77")
		send(exact, R, typeIII(77, false, true), "III-S+O s77")
		send(exact, R, typeIII(77, true, true), "III+S+O s77")
		send(all, O, typeII(77), "II s77 other source")
		send(all, O, typeIII(77, false, false), "III-S s77 other source")
		send(sess5, R, typeII(5), "II s5")
		send(sess5, O, typeIII(5, false, false), "III-S s5 other source")
		send(sess5, R, typeIII(5, true, true), "III+S+O s5")
		send(all, R, typeII(9), "II s9")
		send(all, O, typeIII(9, false, true), "III-S+O s9 other source")
		send(all, R, typeI(), "I")
		send(all, O, typeI(), "I other source")
		dl.check()

		// Phase 2: a session-only collector for the exact tunnel's
		// session. The exact tunnel keeps its switch; every other
		// source of session 77 moves from the catch-all to it.
		// A session 0 collector too: Type I has no session, which
		// is not session 0.
		e.d.mustCtl("create", "erspan3", "tunneladdr", L.String(), "vnetid", "77", "up")
		e.d.mustCtl("create", "erspan4", "tunneladdr", L.String(), "vnetid", "0", "up")
		sess77, sess0 := e.reader("erspan3"), e.reader("erspan4")
		dl.watch(sess77)
		dl.watch(sess0)
		send(exact, R, typeII(77), "II s77 (session-only 77 up)")
		send(sess77, O, typeII(77), "II s77 other source (session-only 77 up)")
		send(sess77, O, typeIII(77, false, true), "III-S+O s77 other source (session-only 77 up)")
		send(all, R, typeI(), "I (session-only 77 and 0 up)")
		send(sess0, R, typeII(0), "II s0")
		send(sess0, O, typeIII(0, false, false), "III-S s0 other source")
		send(all, O, typeI(), "I other source (session-only 77 and 0 up)")
		send(sess5, O, typeII(5), "II s5 other source (session-only 77 up)")
		dl.check()

		// Phase 3: without the catch-all, Type I and unknown sessions
		// match nothing (not even the session 0 collector) and are
		// counted daemon-wide.
		before := e.d.all().Daemon.Unmatched
		e.d.mustCtl("erspan2", "down")
		send(nil, R, typeI(), "I (catch-all down)")
		send(nil, R, typeII(9), "II s9 (catch-all down)")
		send(nil, O, typeIII(6, true, false), "III s6 other source (catch-all down)")
		send(sess77, O, typeII(77), "II s77 other source (catch-all down)")
		dl.check()
		e.d.waitDaemonCounter("unmatched", before+3, func(a ifconfig.All) uint64 { return a.Daemon.Unmatched })

		// Counters agree with what came out of each TAP.
		for _, r := range []*packetReader{exact, sess5, all, sess77, sess0} {
			var bytes uint64
			for _, f := range dl.want[r] {
				bytes += uint64(len(f))
			}
			e.d.waitCounters(r.name, map[string]uint64{"rx_packets": uint64(len(dl.want[r])), "rx_bytes": bytes})
		}
	})
}

// TestFrameHandling checks what happens to frames past the demux: VLAN tags
// of the mirrored frame are kept, a frame with the T bit is delivered (in
// monitor mode) and counted, GRE key and checksum words are skipped, a
// 1514-byte frame survives a fragmented outer packet, outer IPv4 options
// are skipped, a 14-byte frame (the shortest) is delivered, Type III frames
// that are not Ethernet (FT != 0) are dropped and counted, and packets no
// interface takes are counted daemon-wide.
func TestFrameHandling(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	eachFamily(t, func(t *testing.T, e *env, fam family) {
		L, R := fam.local, fam.remote
		e.d.mustCtl("create", "erspan0", "tunnel", L.String(), R.String(), "vnetid", "77", "up")
		r := e.reader("erspan0")
		dl := e.deliveries(r)
		// The outer packets as they reach the collector, to check
		// that the options and fragments below were really sent.
		wire := newPacketReader(t, e.tp.col, "veth0")
		before := e.d.all().Daemon

		deliver := func(what string, p erspan.Packet, f []byte, edit func([]byte) []byte) {
			pkt := encap(t, p, f)
			if edit != nil {
				pkt = edit(pkt)
			}
			e.sender.send(R, L, pkt)
			dl.expect(r, f, what)
		}
		label := func(s string) string { return fam.name + " " + s }

		p := typeII(77)
		p.VLAN, p.COS, p.Encap = 100, 5, 3
		deliver("802.1Q VID 100 PCP 5", p, labeledFrame(label("802.1Q"), 90, 0x8100<<16|5<<13|100), nil)
		deliver("802.1ad + 802.1Q", typeIII(77, true, false), labeledFrame(label("QinQ"), 90, 0x88a8<<16|200, 0x8100<<16|100), nil)
		p = typeII(77)
		p.Truncated = true
		deliver("Type II T bit", p, labeledFrame(label("II T bit"), 70), nil)
		p = typeIII(77, false, false)
		p.Truncated = true
		deliver("Type III T bit", p, labeledFrame(label("III T bit"), 70), nil)
		p = typeII(77)
		p.HasKey, p.Key = true, 0xdeadbeef
		deliver("GRE key", p, labeledFrame(label("GRE key"), 70), nil)
		deliver("GRE checksum", typeII(77), labeledFrame(label("GRE checksum"), 71), addChecksum)
		deliver("1514-byte frame", typeII(77), labeledFrame(label("1514 bytes"), 1514), nil)
		deliver("14-byte frame", typeII(77), labeledFrame("", 60)[:14], nil)
		if fam == inet {
			// Outer IPv4 options: the GRE header starts at IHL*4.
			// Record Route (type 7, length 7, pointer 4), then EOL.
			f := labeledFrame(label("IPv4 options"), 70)
			e.sender.sendWithIPOptions(R, L, encap(t, typeII(77), f), []byte{7, 7, 4, 0, 0, 0, 0, 0})
			dl.expect(r, f, "outer IPv4 options")
		}

		// Not Ethernet: dropped and charged to erspan0.
		p = typeIII(77, true, false)
		p.FrameType = 2
		e.sender.send(R, L, encap(t, p, labeledFrame(label("FT 2"), 70)))
		// No interface: Type I without a catch-all, unknown session.
		e.sender.send(R, L, encap(t, typeI(), labeledFrame(label("unmatched I"), 70)))
		e.sender.send(R, L, encap(t, typeII(99), labeledFrame(label("unmatched s99"), 70)))
		// A last good frame: once it is out, the ones before it have
		// been handled.
		deliver("marker", typeII(77), labeledFrame(label("marker"), 60), nil)
		dl.check()

		frags, opts := outerShapes(wire.received())
		if frags < 2 {
			t.Errorf("the 1514-byte frame's outer packet reached the collector in %d fragments; the test meant to send it fragmented", frags)
		}
		if fam == inet && opts == 0 {
			t.Errorf("no outer IPv4 packet with options reached the collector; the test meant to send one")
		}
		e.d.waitDaemonCounter("unmatched", before.Unmatched+2, func(a ifconfig.All) uint64 { return a.Daemon.Unmatched })
		var bytes uint64
		for _, f := range dl.want[r] {
			bytes += uint64(len(f))
		}
		e.d.waitCounters("erspan0", map[string]uint64{
			"rx_packets":    uint64(len(dl.want[r])),
			"rx_bytes":      bytes,
			"rx_truncated":  2, // one Type II, one Type III with the T bit
			"rx_frame_type": 1, // Type III FT=2
		})
	})
}

// addChecksum turns a GRE packet without checksum into one with a correct
// RFC 2784 checksum: C flag set, checksum and reserved words inserted after
// the first four bytes.
func addChecksum(pkt []byte) []byte {
	out := make([]byte, 0, len(pkt)+4)
	out = append(out, pkt[:4]...)
	out[0] |= 0x80
	out = append(out, 0, 0, 0, 0)
	out = append(out, pkt[4:]...)
	binary.BigEndian.PutUint16(out[4:], erspan.Checksum(out))
	return out
}

// waitDaemonCounter waits until a daemon-wide counter reaches want (the
// daemon may still be counting the packets before the last one delivered
// when several goroutines read), then fails the test unless it is exactly
// want.
func (d *daemon) waitDaemonCounter(name string, want uint64, get func(ifconfig.All) uint64) ifconfig.All {
	d.t.Helper()
	deadline := time.Now().Add(frameTimeout)
	for {
		a := d.all()
		got := get(a)
		if got >= want || time.Now().After(deadline) {
			if got != want {
				d.t.Errorf("daemon %s = %d, want %d (daemon: %+v)", name, got, want, a.Daemon)
			}
			return a
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitCounters waits (at most frameTimeout) until the counters of
// interface name, by the names erspanctl -j gives them, have the values in
// want, then fails the test unless they do. A frame seen on a TAP or the
// wire may not be counted yet: erspand adds rx_packets and rx_bytes after
// the TAP write, and tx_* after the send returns.
func (d *daemon) waitCounters(name string, want map[string]uint64) {
	d.t.Helper()
	deadline := time.Now().Add(frameTimeout)
	for {
		var s struct {
			Counters map[string]uint64 `json:"counters"`
		}
		out := d.mustCtl("-j", name)
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			d.t.Fatalf("erspanctl -j %s: %v\n%s", name, err, out)
		}
		got := make(map[string]uint64, len(want))
		for k := range want {
			v, ok := s.Counters[k]
			if !ok {
				d.t.Fatalf("%s has no counter %q: %v", name, k, s.Counters)
			}
			got[k] = v
		}
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			d.t.Errorf("%s counters %v, want %v", name, got, want)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// outerShapes counts, among frames seen on the collector's veth, the GRE
// fragments (IPv4 MF or offset, IPv6 fragment header) and the IPv4 GRE
// packets with options.
func outerShapes(frames [][]byte) (frags, opts int) {
	for _, f := range frames {
		if len(f) < 14+20 {
			continue
		}
		ip := f[14:]
		switch binary.BigEndian.Uint16(f[12:]) {
		case 0x0800:
			if ip[9] != 47 {
				continue
			}
			if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
				frags++
			}
			if ip[0]&0xf > 5 {
				opts++
			}
		case 0x86dd:
			if len(ip) > 40 && ip[6] == 44 && ip[40] == 47 {
				frags++
			}
		}
	}
	return frags, opts
}
