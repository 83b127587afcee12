package tunnel

import (
	"bytes"
	"encoding/binary"
	"golang.org/x/sys/unix"
	"net/netip"
	"testing"
	"time"

	"github.com/erspan-linux/erspan/erspan"
)

func parseIP(t *testing.T, s string) []byte {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a.AsSlice()
}

// readN reads n messages (bounded in time) and copies them out.
func readN(t *testing.T, s *GRESocket, n int) []Message {
	t.Helper()
	var out []Message
	got := make(chan struct{})
	go func() {
		defer close(got)
		for len(out) < n {
			msgs, err := s.ReadBatch()
			if err != nil {
				return
			}
			for _, m := range msgs {
				m.GRE = append([]byte(nil), m.GRE...)
				out = append(out, m)
			}
		}
	}()
	select {
	case <-got:
	case <-time.After(3 * time.Second):
		s.Close()
		<-got
	}
	return out
}

func testGRESocket(t *testing.T, family int, local, remote string) {
	sw, col := pair(t)
	var s *GRESocket
	in(t, col, func() {
		var err error
		s, err = ListenGRE(family, 8, 2048, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
	})
	defer s.Close()
	f := frame(1, 64)
	ii := gre(t, typeII(7), f)
	i := gre(t, erspan.Packet{Type: erspan.TypeI}, f)
	iii := gre(t, erspan.Packet{Type: erspan.TypeIII, Session: 9}, f)
	teb := append([]byte{0, 0, 0x65, 0x58}, f...)   // GRE-TEB: not ERSPAN, filtered out
	ipgre := append([]byte{0, 0, 0x08, 0x00}, f...) // IPv4-in-GRE: likewise
	rawSend(t, sw, local, teb, ii, ipgre, i, iii)
	got := readN(t, s, 3)
	want := [][]byte{ii, i, iii}
	if len(got) != len(want) {
		t.Fatalf("read %d ERSPAN packets, want %d: %+v", len(got), len(want), got)
	}
	for k, m := range got {
		if m.Err != nil || m.Src.String() != remote || m.Dst.String() != local || !bytes.Equal(m.GRE, want[k]) {
			t.Errorf("message %d: err %v src %s dst %s gre % x", k, m.Err, m.Src, m.Dst, m.GRE[:8])
		}
	}
}

func TestGRESocketIPv4(t *testing.T) { testGRESocket(t, 4, "192.0.2.2", "192.0.2.1") }

func TestGRESocketIPv6(t *testing.T) { testGRESocket(t, 6, "2001:db8::2", "2001:db8::1") }

// icmpUnreachables counts, for a while, ICMP protocol-unreachable (IPv4
// type 3 code 2) and ICMPv6 unrecognised-next-header (type 4 code 1)
// messages arriving at the switch's veth.
func icmpUnreachables(t *testing.T, ns string, send func()) int {
	t.Helper()
	var fd int
	in(t, ns, func() {
		l := mustLink(t, "veth-sw")
		fd = packetSocket(t, l.Attrs().Index)
	})
	defer unix.Close(fd)
	send()
	n := 0
	buf := make([]byte, 2048)
	deadline := time.Now().Add(700 * time.Millisecond)
	for time.Now().Before(deadline) {
		m, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype == unix.PACKET_OUTGOING || m < 14+48 {
			continue
		}
		switch et := binary.BigEndian.Uint16(buf[12:]); {
		case et == 0x0800 && buf[14+9] == 1:
			ihl := int(buf[14]&0xf) * 4
			if buf[14+ihl] == 3 && buf[14+ihl+1] == 2 {
				n++
			}
		case et == 0x86dd && buf[14+6] == 58 && buf[14+40] == 4 && buf[14+41] == 1:
			n++
		}
	}
	return n
}

// TestNoICMPWhileListening: with no raw GRE socket the kernel answers
// ERSPAN with protocol unreachable (which shows the sniffer sees it);
// while a GRESocket is open it answers nothing, also for packets nobody
// will take (design.md, Data path: ICMP).
func TestNoICMPWhileListening(t *testing.T) {
	for _, tc := range []struct {
		family int
		dst    string
	}{{4, "192.0.2.2"}, {6, "2001:db8::2"}} {
		sw, col := pair(t)
		// No ICMP rate limit: a suppressed answer must not pass for none.
		sh(t, "ip netns exec "+col+" sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0")
		pkt := gre(t, typeII(1), frame(1, 64))
		if n := icmpUnreachables(t, sw, func() { rawSend(t, sw, tc.dst, pkt, pkt) }); n == 0 {
			t.Fatalf("IPv%d: no ICMP without a socket: the check cannot see ICMP", tc.family)
		}
		var s *GRESocket
		in(t, col, func() {
			var err error
			if s, err = ListenGRE(tc.family, 8, 2048, 1<<20); err != nil {
				t.Fatal(err)
			}
		})
		bad := append([]byte{0, 0, 0x65, 0x58}, frame(1, 64)...) // filtered out by our BPF
		if n := icmpUnreachables(t, sw, func() { rawSend(t, sw, tc.dst, pkt, pkt, bad) }); n != 0 {
			t.Errorf("IPv%d: %d ICMP unreachables while a GRE socket is open", tc.family, n)
		}
		s.Close()
	}
}

// TestGRESocketAllocs: ReadBatch allocates nothing, on a real socket.
func TestGRESocketAllocs(t *testing.T) {
	for _, tc := range []struct {
		family int
		dst    string
	}{{4, "192.0.2.2"}, {6, "2001:db8::2"}} {
		sw, col := pair(t)
		var s *GRESocket
		in(t, col, func() {
			var err error
			if s, err = ListenGRE(tc.family, 4, 2048, 1<<20); err != nil {
				t.Fatal(err)
			}
		})
		pkt := gre(t, typeII(1), frame(1, 64))
		pkts := make([][]byte, 200)
		for i := range pkts {
			pkts[i] = pkt
		}
		rawSend(t, sw, tc.dst, pkts...)
		// 21 calls of up to 4 packets each: all served by the 200 queued.
		allocs := testing.AllocsPerRun(20, func() {
			if _, err := s.ReadBatch(); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("IPv%d: ReadBatch made %v allocations per call, want 0", tc.family, allocs)
		}
		s.Close()
	}
}
