package test

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/erspan-linux/erspan/erspan"
	"github.com/erspan-linux/erspan/ifconfig"
)

// badPacket is a malformed GRE payload and the drop reason (a key of
// daemon.drops in `erspanctl -j`) it must be counted under.
type badPacket struct {
	what   string
	pkt    []byte
	reason string
}

// TestMalformed sends malformed packets (cut short at many lengths, GRE
// version 1 and 7, R, s, recursion and reserved flag bits, a wrong GRE
// checksum, inner frames under 14 bytes, random bytes claiming to be
// ERSPAN, and the fuzzed real capture tcpdump__erspan-type-iii-pb-1) at an
// exact tunnel and a catch-all: nothing reaches either TAP, each is
// counted in daemon.drops under its reason, nothing counts as unmatched,
// and afterwards good packets are still delivered by the same daemon.
func TestMalformed(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	eachFamily(t, func(t *testing.T, e *env, fam family) {
		L, R := fam.local, fam.remote
		e.d.mustCtl("create", "erspan0", "tunnel", L.String(), R.String(), "vnetid", "77", "up")
		e.d.mustCtl("create", "erspan1", "tunneladdr", L.String(), "up")
		exact, all := e.reader("erspan0"), e.reader("erspan1")
		dl := e.deliveries(exact, all)
		markers := 0
		marker := func() {
			markers++
			label := fmt.Sprintf("%s marker %d", fam.name, markers)
			f := labeledFrame(label, 60)
			e.sender.send(R, L, encap(t, typeII(77), f))
			dl.expect(exact, f, label)
		}
		before := e.d.all().Daemon

		// Crafted packets, each with a known reason.
		bad := craftedBadPackets(t, fam.name)
		want := make(map[string]uint64)
		for _, b := range bad {
			e.sender.send(R, L, b.pkt)
			want[b.reason]++
		}
		marker()
		dl.check()
		after := waitDrops(t, e.d, before, sumCounts(want))
		for reason := range before.Drops {
			if got := after.Drops[reason] - before.Drops[reason]; got != want[reason] {
				t.Errorf("daemon.drops[%q] went up by %d, want %d", reason, got, want[reason])
			}
		}
		for reason := range want {
			if _, ok := after.Drops[reason]; !ok {
				t.Errorf("daemon.drops has no %q reason: %v", reason, after.Drops)
			}
		}
		if c := e.d.status("erspan0").Counters; c.RxInnerShort != 2 {
			// Two of the inner-short packets carry erspan0's
			// session from its switch (see craftedBadPackets).
			t.Errorf("erspan0 rx_inner_short = %d, want 2", c.RxInnerShort)
		}
		if t.Failed() {
			for _, b := range bad {
				t.Logf("sent %-40s %-12s % x", b.what, b.reason, b.pkt[:min(len(b.pkt), 24)])
			}
		}

		// Random bytes claiming to be ERSPAN, and a real fuzzed
		// capture. Their reasons depend on which check a decoder
		// makes first, so only the total is checked.
		before = after
		rnd := randomBadPackets(32)
		if fam == inet {
			// The capture's outer header is IPv6; its GRE payload
			// is what matters, and one family is enough.
			rnd = append(rnd, fuzzedCapturePayload(t))
		}
		for _, p := range rnd {
			e.sender.send(R, L, p)
		}
		marker()
		dl.check()
		after = waitDrops(t, e.d, before, uint64(len(rnd)))
		if after.Unmatched != before.Unmatched {
			t.Errorf("daemon.unmatched went up by %d for malformed packets, want 0", after.Unmatched-before.Unmatched)
		}
		if !e.d.alive() {
			t.Fatalf("erspand died")
		}
	})
}

func sumCounts(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// waitDrops waits until daemon.drops went up by n in total since before
// (bounded), and fails the test when it went up by another amount.
func waitDrops(t *testing.T, d *daemon, before ifconfig.DaemonStatus, n uint64) ifconfig.DaemonStatus {
	t.Helper()
	total := func(s ifconfig.DaemonStatus) uint64 { return sumCounts(s.Drops) }
	a := d.waitDaemonCounter("drops (all reasons)", total(before)+n, func(a ifconfig.All) uint64 { return total(a.Daemon) })
	return a.Daemon
}

// craftedBadPackets builds malformed variants of good packets. Every one
// would go to erspan0 (session 77 from its switch) or the catch-all if it
// were well-formed.
func craftedBadPackets(t *testing.T, tag string) []badPacket {
	frame := labeledFrame(tag+" malformed", 60)
	ii := encap(t, typeII(77), frame)               // GRE 8 + ERSPAN 8
	iii := encap(t, typeIII(77, true, true), frame) // GRE 8 + ERSPAN 12 + platform 8
	iiiNoSeq := encap(t, typeIII(77, false, false), frame)
	cut := func(what string, b []byte, n int) badPacket {
		return badPacket{fmt.Sprintf("%s cut to %d bytes", what, n), slices.Clone(b[:n]), "truncated"}
	}
	flags := func(what string, b []byte, set uint16, reason string) badPacket {
		c := slices.Clone(b)
		binary.BigEndian.PutUint16(c, binary.BigEndian.Uint16(c)|set)
		return badPacket{what, c, reason}
	}
	wrongSum := addChecksum(ii)
	wrongSum[4] ^= 0x5a
	keyOnly := []byte{0x20, 0x00, 0x88, 0xbe, 0xde, 0xad} // K set, key cut short
	return []badPacket{
		// Shorter than the headers the flags announce. Packets of
		// fewer than 4 bytes have no protocol type: the socket's filter
		// may drop them before the daemon sees them, so they are left
		// out of the counted ones.
		cut("II", ii, 4), cut("II", ii, 6), cut("II", ii, 8), cut("II", ii, 12), cut("II", ii, 15),
		cut("III+S+O", iii, 10), cut("III+S+O", iii, 19), cut("III+S+O (platform)", iii, 24),
		cut("III-S", iiiNoSeq, 15),
		{"GRE key cut short", keyOnly, "truncated"},
		// GRE flags a receiver must find zero.
		flags("GRE version 1", ii, 0x0001, "gre-version"),
		flags("GRE version 7", ii, 0x0007, "gre-version"),
		flags("R bit", ii, 0x4000, "gre-flags"),
		flags("s bit", ii, 0x0800, "gre-flags"),
		flags("recursion 5", ii, 0x0500, "gre-flags"),
		flags("reserved flag bit", ii, 0x0080, "gre-flags"),
		{"GRE checksum wrong", wrongSum, "gre-checksum"},
		// Inner frames under 14 bytes.
		{"II with no inner frame", slices.Clone(ii[:16]), "inner-short"},
		{"II with a 13-byte inner frame", slices.Clone(ii[:16+13]), "inner-short"},
		{"I with a 10-byte inner frame", append([]byte{0, 0, 0x88, 0xbe}, frame[:10]...), "inner-short"},
	}
}

// randomBadPackets returns n pseudo-random GRE payloads (fixed seed) with
// protocol 0x88BE or 0x22EB, each with at least one GRE flags-word bit
// that makes it malformed (version, R, s, recursion or reserved), so that
// no receiver may deliver it.
func randomBadPackets(n int) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	var out [][]byte
	for len(out) < n {
		b := make([]byte, 4+r.IntN(120))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if binary.BigEndian.Uint16(b)&0x4fff == 0 {
			continue // well-formed flags: not what this is about
		}
		proto := uint16(erspan.ProtoERSPAN)
		if r.IntN(2) == 1 {
			proto = erspan.ProtoERSPAN3
		}
		binary.BigEndian.PutUint16(b[2:], proto)
		out = append(out, b)
	}
	return out
}

// fuzzedCapturePayload is the GRE payload of tcpdump's fuzzed Type III
// capture: S, strict source route and recursion 5 set, the platform
// subheader cut off.
func fuzzedCapturePayload(t *testing.T) []byte {
	t.Helper()
	pkts := readCapture(t, "tcpdump__erspan-type-iii-pb-1.pcap")
	if len(pkts) != 1 {
		t.Fatalf("tcpdump__erspan-type-iii-pb-1.pcap: %d GRE packets, want 1", len(pkts))
	}
	return pkts[0].gre
}
