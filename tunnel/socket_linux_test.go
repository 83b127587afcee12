package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// listenGREGuarded is listenGRE with a guard socket of its own when it
// reads with recvmmsg (unless guardSockets is off), for the tests that
// have no Linux host. A socket asked for a ring that reads with recvmmsg
// is an error.
func listenGREGuarded(family, batch, bufSize, rcvbuf int, moderate time.Duration, ring bool) (Socket, error) {
	s, err := listenGRE(family, batch, bufSize, rcvbuf, moderate, ring)
	if err != nil {
		return nil, err
	}
	g, ok := s.(*GRESocket)
	if ring && ok {
		s.Close()
		return nil, fmt.Errorf("no eBPF ring: %w", g.RingError())
	}
	if guardSockets && ok {
		af := unix.AF_INET
		if family == 6 {
			af = unix.AF_INET6
		}
		fd, err := openGuard(af)
		if err != nil {
			s.Close()
			return nil, err
		}
		g.guards = guards{func() { unix.Close(fd) }}
	}
	return s, nil
}

// listenGREIn is listenGREGuarded in ns, the socket closed when the test
// ends.
func listenGREIn(t *testing.T, ns *testNetns, family, batch, bufSize, rcvbuf int, moderate time.Duration, ring bool) Socket {
	t.Helper()
	var s Socket
	ns.do(t, func() {
		var err error
		if s, err = listenGREGuarded(family, batch, bufSize, rcvbuf, moderate, ring); err != nil {
			t.Fatalf("listenGREGuarded: %v", err)
		}
	})
	t.Cleanup(func() { s.Close() })
	return s
}

// openGuard opens a guard for a receive socket of the tests: a raw GRE
// socket of address family af whose filter accepts nothing (see
// listenGRE; erspand uses its shared send socket instead).
func openGuard(af int) (int, error) { return openRawGRE(af, attachDropAll) }

// socketTestAddrs are the outer addresses vethPair gives the sender (the
// switch) and the collector.
func socketTestAddrs(family int) (sender, collector netip.Addr) {
	if family == 4 {
		return netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	}
	return netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
}

type receivedGRE struct {
	src, dst netip.Addr
	gre      []byte
	err      error
}

// readGRE reads n messages from s (copying them out of its buffers), and
// fails the test if they do not come within d: the socket is then closed
// to end the pending ReadBatch.
func readGRE(t *testing.T, s Socket, n int, d time.Duration) []receivedGRE {
	t.Helper()
	timer := time.AfterFunc(d, func() { s.Close() })
	defer timer.Stop()
	var got []receivedGRE
	for len(got) < n {
		msgs, err := s.ReadBatch()
		if errors.Is(err, net.ErrClosed) {
			t.Fatalf("got %d of %d packets within %v", len(got), n, d)
		}
		if err != nil {
			t.Fatalf("ReadBatch: %v", err)
		}
		if len(msgs) == 0 {
			t.Fatalf("ReadBatch returned no messages and no error")
		}
		for _, m := range msgs {
			got = append(got, receivedGRE{m.Src, m.Dst, append([]byte(nil), m.GRE...), m.Err})
		}
	}
	return got
}

// typeIIBody is an ERSPAN Type II header (session 5) and a frame.
func typeIIBody(tag byte) []byte {
	return append([]byte{0x10, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00}, fakeFrame(tag)...)
}

// typeIIIBody is an ERSPAN Type III header (session 6) and a frame.
func typeIIIBody(tag byte) []byte {
	return append([]byte{0x20, 0x00, 0x00, 0x06, 0, 0, 0, 1, 0, 0, 0, 0}, fakeFrame(tag)...)
}

func TestSocketIPv4(t *testing.T) {
	bothReceivers(t, func(t *testing.T, ring bool) { testSocket(t, 4, false, ring) })
}
func TestSocketIPv4Options(t *testing.T) {
	bothReceivers(t, func(t *testing.T, ring bool) { testSocket(t, 4, true, ring) })
}
func TestSocketIPv6(t *testing.T) {
	bothReceivers(t, func(t *testing.T, ring bool) { testSocket(t, 6, false, ring) })
}

// bothReceivers runs test for a GRE socket that reads with recvmmsg and
// for one that reads an eBPF ring.
func bothReceivers(t *testing.T, test func(t *testing.T, ring bool)) {
	t.Run("recvmmsg", func(t *testing.T) { test(t, false) })
	t.Run("ring", func(t *testing.T) { test(t, true) })
}

func testSocket(t *testing.T, family int, ipOptions, ring bool) {
	sender, collector := vethPair(t)
	src, dst := socketTestAddrs(family)
	s := listenGREIn(t, collector, family, 8, 2048, 1<<20, DefaultModerate, ring)
	// A second socket whose buffer is too small for the packet sent last.
	small := listenGREIn(t, collector, family, 4, 128, 0, DefaultModerate, ring)
	var sniff *packetSniffer
	collector.do(t, func() {
		eth0, err := net.InterfaceByName("eth0")
		if err != nil {
			t.Fatalf("eth0: %v", err)
		}
		sniff = newPacketSniffer(t, eth0.Index)
	})
	var snd *greSender
	sender.do(t, func() {
		snd = newGRESender(t, net.IP(dst.AsSlice()))
		if ipOptions {
			// Three NOPs and an end-of-list: IHL 6 instead of 5.
			if err := unix.SetsockoptString(snd.fd, unix.IPPROTO_IP, unix.IP_OPTIONS, "\x01\x01\x01\x00"); err != nil {
				t.Fatalf("IP_OPTIONS: %v", err)
			}
		}
	})

	erspan2 := grePacket(erspan.ProtoERSPAN, true, 1, typeIIBody(1))
	erspan1 := grePacket(erspan.ProtoERSPAN, false, 0, fakeFrame(3)) // Type I: no S, no header
	erspan3 := grePacket(erspan.ProtoERSPAN3, true, 2, typeIIIBody(4))
	erspan3NoSeq := grePacket(erspan.ProtoERSPAN3, false, 0, typeIIIBody(5))
	teb := grePacket(erspan.ProtoTEB, false, 0, fakeFrame(2))
	ipv4 := grePacket(unix.ETH_P_IP, false, 0, []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 9, 192, 0, 2, 10})
	// The filter looks at the protocol field only; flags it does not
	// like are for the decoder to count. (Byte 0 is also what an IPv4
	// filter's ldx msh would wrongly read as a header length here.)
	oddFlags := append([]byte{0x08, 0x00, 0x88, 0xbe}, fakeFrame(8)...)
	last := grePacket(erspan.ProtoERSPAN, true, 3, typeIIBody(6))
	// The rejected ones go between the accepted ones: anything the filter
	// let through would show up in the sequence read back.
	snd.send(erspan2, teb, erspan1, ipv4, erspan3, erspan3NoSeq, teb, oddFlags, last)
	want := [][]byte{erspan2, erspan1, erspan3, erspan3NoSeq, oddFlags, last}

	if ipOptions {
		f := sniff.await(2*time.Second, func(f []byte) bool {
			return len(f) > 34 && f[12] == 0x08 && f[13] == 0x00 && f[14+9] == erspan.IPProtoGRE
		})
		if f == nil || f[14]&0x0f != 6 {
			t.Fatalf("the GRE packets on the wire carry no IPv4 option (frame % x)", f)
		}
	}

	got := readGRE(t, s, len(want), 5*time.Second)
	if len(got) != len(want) {
		t.Fatalf("read %d packets, want %d (a rejected one passed the filter)", len(got), len(want))
	}
	for i, g := range got {
		if g.err != nil || g.src != src || g.dst != dst || !bytes.Equal(g.gre, want[i]) {
			t.Errorf("packet %d: %v -> %v err %v gre % x; want %v -> %v gre % x",
				i, g.src, g.dst, g.err, g.gre, src, dst, want[i])
		}
	}
	if d := s.KernelDrops(); d != 0 {
		t.Errorf("KernelDrops = %d, want 0", d)
	}

	// Too big for the small socket's 128-byte buffer: ErrShort.
	big := grePacket(erspan.ProtoERSPAN, true, 4, append(typeIIBody(7), make([]byte, 200)...))
	snd.send(big)
	for _, g := range readGRE(t, small, len(want)+1, 5*time.Second)[len(want):] {
		if g.err != erspan.ErrShort || g.gre != nil {
			t.Errorf("packet over the buffer size: err %v, gre %d bytes; want ErrShort, nil", g.err, len(g.gre))
		}
		if family == 4 && (g.src != src || g.dst != dst) {
			t.Errorf("truncated packet %v -> %v, want the addresses still", g.src, g.dst)
		}
	}
	if g := readGRE(t, s, 1, 5*time.Second)[0]; !bytes.Equal(g.gre, big) {
		t.Errorf("the big packet came whole through the large buffer: got %d bytes, want %d", len(g.gre), len(big))
	}

	// Close unblocks a pending ReadBatch, which returns net.ErrClosed.
	checkCloseUnblocks(t, "ReadBatch", unix.SYS_PPOLL, func() error { _, err := s.ReadBatch(); return err }, s.Close, net.ErrClosed)
	if _, err := s.ReadBatch(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadBatch on a closed socket: %v, want net.ErrClosed", err)
	}
}

// A sensor's capture socket passes up what arrives on its interface, not
// what the host sends out of it (ERSPAN the host itself sends, say): the
// kernel leaves it out (PACKET_IGNORE_OUTGOING, Linux 4.20), and where it
// cannot, ReadBatch skips it by the ring's packet type, as checked with
// the option off.
func TestCaptureSkipsOutgoing(t *testing.T) {
	for _, kernel := range []bool{true, false} {
		t.Run(fmt.Sprintf("PACKET_IGNORE_OUTGOING=%v", kernel), func(t *testing.T) {
			ignoreOutgoing = kernel
			defer func() { ignoreOutgoing = true }()
			sender, collector := vethPair(t)
			s := listenCaptureIn(t, collector, 16, 0, 0)
			var v int
			s.r.control(func(fd int) { v, _ = unix.GetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING) })
			if (v == 1) != kernel {
				t.Errorf("PACKET_IGNORE_OUTGOING = %d, want it set: %v", v, kernel)
			}
			collector.do(t, func() {
				// Out of the captured interface, before anything comes in.
				newGRESender(t, net.IPv4(192, 0, 2, 1)).send(grePacket(erspan.ProtoERSPAN, true, 1, typeIIBody(1)))
			})
			// Its block is handed over alone (1 ms): a batch of
			// nothing but skipped frames, which ReadBatch must not
			// return empty.
			time.Sleep(20 * time.Millisecond)
			sender.do(t, func() {
				newGRESender(t, net.IPv4(192, 0, 2, 2)).send(grePacket(erspan.ProtoERSPAN, true, 2, typeIIBody(2)))
			})
			// The socket keeps the order frames passed, so the outgoing one
			// would come first.
			got := readGRE(t, s, 1, 5*time.Second)
			want := grePacket(erspan.ProtoERSPAN, true, 2, typeIIBody(2))
			if got[0].src != netip.MustParseAddr("192.0.2.1") || !bytes.Equal(got[0].gre, want) {
				t.Errorf("first packet captured from %v (%x), want the incoming one from 192.0.2.1", got[0].src, got[0].gre)
			}
		})
	}
}

func TestSocketKernelDrops(t *testing.T) {
	sender, collector := vethPair(t)
	const ring = false // TestGRERingOverflow
	// The smallest buffer the kernel allows: a burst overflows it.
	s := listenGREIn(t, collector, 4, 16, 2048, 1, DefaultModerate, ring)
	var snd *greSender
	sender.do(t, func() { snd = newGRESender(t, net.IPv4(192, 0, 2, 2)) })
	pkt := grePacket(erspan.ProtoERSPAN, true, 1, typeIIBody(1))
	for range 200 {
		snd.send(pkt)
	}
	// Empty the queue; packets queued before the overflow carry no count.
	read := len(readGRE(t, s, 1, 5*time.Second))
	for range 200 {
		if read >= 200 || s.KernelDrops() > 0 {
			break
		}
		// The next packet, queued after the drops, carries their count.
		snd.send(pkt)
		read += len(readGRE(t, s, 1, 5*time.Second))
	}
	if s.KernelDrops() == 0 {
		t.Errorf("KernelDrops = 0 after a burst of 200 into a minimal buffer (%d read)", read)
	}
}

// TestSocketAllocs: ReadBatch allocates nothing, also for packets that
// carry SO_RXQ_OVFL, which they do once the socket has dropped any: the
// socket is overflowed first, so the reads measured parse that control
// message (and, for IPv6, IPV6_PKTINFO).
func TestSocketAllocs(t *testing.T) {
	const ring = false // TestGRERingAllocs
	for _, family := range []int{4, 6} {
		sender, collector := vethPair(t)
		_, dst := socketTestAddrs(family)
		// The smallest buffer the kernel allows: a burst overflows it.
		s := listenGREIn(t, collector, family, 4, 2048, 1, DefaultModerate, ring).(*GRESocket)
		var snd *greSender
		sender.do(t, func() { snd = newGRESender(t, net.IP(dst.AsSlice())) })
		pkt := func(i int) []byte { return grePacket(erspan.ProtoERSPAN, true, uint32(i), typeIIBody(byte(i))) }
		for i := range 200 {
			snd.send(pkt(i))
		}
		// Read until a packet brings the drop count (as in
		// TestSocketKernelDrops): every packet queued after it carries
		// SO_RXQ_OVFL too, the count being cumulative.
		readGRE(t, s, 1, 5*time.Second)
		for i := 0; i < 200 && s.KernelDrops() == 0; i++ {
			snd.send(pkt(i))
			readGRE(t, s, 1, 5*time.Second)
		}
		if s.KernelDrops() == 0 {
			t.Fatalf("IPv%d: no drop after a burst of 200 into a minimal buffer", family)
		}
		// Room for what follows, all of it queued after the drops.
		var err error
		if !s.c.control(func(fd int) { err = setRcvBuf(fd, 1<<20) }) || err != nil {
			t.Fatalf("IPv%d: enlarge the receive buffer: %v", family, err)
		}
		const runs, pending = 10, 64 // at most (runs+1)*4 = 44 are read
		for i := range pending {
			snd.send(pkt(i))
		}
		// Close ends a ReadBatch left waiting (ReadBatch then fails):
		// the packets are queued as the sends return (veth), but
		// should they not come, the test ends rather than hang.
		timer := time.AfterFunc(5*time.Second, func() { s.Close() })
		var errs, read int
		allocs := testing.AllocsPerRun(runs, func() {
			// Forgotten before every read measured (AllocsPerRun's
			// first call is not), so that each publishes the drop
			// count again. ReadBatch alone uses it.
			s.lastDrops = 0
			msgs, err := s.ReadBatch()
			if err != nil {
				errs++
			}
			read += len(msgs)
		})
		timer.Stop()
		if errs > 0 || read == 0 {
			t.Fatalf("IPv%d: %d ReadBatch errors (the socket is closed after 5 s), %d packets read", family, errs, read)
		}
		if s.lastDrops == 0 {
			t.Fatalf("IPv%d: no packet read carried SO_RXQ_OVFL: the measure misses that path", family)
		}
		if allocs != 0 {
			t.Errorf("IPv%d: ReadBatch allocates %.1f times per call, want 0", family, allocs)
		}
	}
}

// icmpWatch watches the sender's side of a vethPair for the kernel's
// answer to GRE nobody takes: ICMP protocol unreachable (IPv4) or
// parameter problem, unrecognised next header (IPv6).
type icmpWatch struct {
	family int
	sniff  *packetSniffer
	snd    *greSender // to the collector's address of family
}

func watchUnreachable(t *testing.T, sender *testNetns, family int) *icmpWatch {
	t.Helper()
	_, dst := socketTestAddrs(family)
	w := &icmpWatch{family: family}
	sender.do(t, func() {
		eth0, err := net.InterfaceByName("eth0")
		if err != nil {
			t.Fatalf("eth0: %v", err)
		}
		w.sniff = newPacketSniffer(t, eth0.Index)
		w.snd = newGRESender(t, net.IP(dst.AsSlice()))
	})
	return w
}

func (w *icmpWatch) unreachable(f []byte) bool {
	if w.family == 4 {
		return isICMPv4(f, 3, 2, -1)
	}
	return isICMPv6(f, 4, 1)
}

// guarded fails t if the packets sent so far drew an ICMP error (what
// holds the guard is open), then closes it with closeFn and sends pkt,
// which must draw one: the control that the sniffer would see it.
func (w *icmpWatch) guarded(t *testing.T, what string, closeFn func() error, pkt []byte) {
	t.Helper()
	if f := w.sniff.await(500*time.Millisecond, w.unreachable); f != nil {
		t.Errorf("IPv%d: ICMP error while %s is open: % x", w.family, what, f)
	}
	closeFn()
	w.snd.send(pkt)
	if w.sniff.await(2*time.Second, w.unreachable) == nil {
		t.Errorf("IPv%d: no ICMP error once %s closed: the sniffer cannot see it", w.family, what)
	}
}

// TestICMPUnreachable shows that the kernel answers ERSPAN with ICMP
// protocol unreachable (IPv6: parameter problem, unrecognised next header)
// when no raw GRE socket is open, and that an open GRESocket silences it,
// also for GRE that its filter rejects and nobody reads.
func TestICMPUnreachable(t *testing.T) { bothReceivers(t, testICMPUnreachable) }

func testICMPUnreachable(t *testing.T, ring bool) {
	for _, family := range []int{4, 6} {
		sender, collector := vethPair(t)
		w := watchUnreachable(t, sender, family)
		erspanPkt := grePacket(erspan.ProtoERSPAN, true, 1, typeIIBody(1))
		teb := grePacket(erspan.ProtoTEB, false, 0, fakeFrame(2))

		// Listening first, so that ICMP rate limits cannot hide anything.
		var s Socket
		collector.do(t, func() {
			var err error
			if s, err = listenGREGuarded(family, 8, 2048, 0, DefaultModerate, ring); err != nil {
				t.Fatalf("listenGREGuarded: %v", err)
			}
		})
		for range 3 {
			w.snd.send(erspanPkt, teb)
		}
		w.guarded(t, "a GRESocket", s.Close, erspanPkt)
	}
}

// TestCaptureNoICMP: a sensor NIC that has an address, and receives
// ERSPAN for it, must not have the kernel answer the switch with ICMP
// protocol unreachable (no raw GRE socket takes those packets): the
// capture holds the namespace's guards. After Close the ICMP comes, which
// shows the sniffer would see it.
func TestCaptureNoICMP(t *testing.T) {
	for _, family := range []int{4, 6} {
		sender, collector := vethPair(t)
		w := watchUnreachable(t, sender, family)
		l, err := NewLinux()
		if err != nil {
			t.Fatal(err)
		}
		s, err := l.ListenCapture(collector.name, "eth0")
		if err != nil {
			t.Fatalf("Linux.ListenCapture: %v", err)
		}
		pkt := grePacket(erspan.ProtoERSPAN, true, 1, typeIIBody(1))
		w.snd.send(pkt, pkt, pkt)
		readGRE(t, s, 3, 5*time.Second) // fails the test unless all three come
		w.guarded(t, "a capture on the NIC", s.Close, pkt)
	}
}

// TestNoICMPOnOverflow: a receive socket whose buffer overflows must not
// make the kernel answer the switch with ICMP (Linux 6.10 and later do,
// for packets a full raw socket drops). The control run, without a guard
// socket, shows the sniffer sees that ICMP on this kernel; if the kernel
// sends none even then, the control says so and the guarded runs still
// must see none. Guarded twice: by a guard of its own (listenGREGuarded), and as erspand
// runs, by the shared send socket (Linux.ListenGRE), which must also leave
// the namespace with two raw GRE sockets when an interface sends there.
func TestNoICMPOnOverflow(t *testing.T) {
	const (
		noGuard = iota
		ownGuard
		sharedGuard
	)
	const ring = false // a ring's socket never overflows: TestGRERingOverflow
	run := func(mode int) (icmp bool, drops uint64) {
		guardSockets = mode != noGuard
		defer func() { guardSockets = true }()
		sender, collector := vethPair(t)
		var s Socket
		collector.do(t, func() {
			sh := "sysctl -qw net.ipv4.icmp_ratelimit=0"
			if out, err := exec.Command("sh", "-c", sh).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v %s", sh, err, out)
			}
			if mode == sharedGuard {
				return
			}
			var err error
			if s, err = listenGREGuarded(4, 16, 2048, 1, DefaultModerate, ring); err != nil {
				t.Fatalf("listenGREGuarded: %v", err)
			}
		})
		if mode == sharedGuard {
			l, err := NewLinux()
			if err != nil {
				t.Fatal(err)
			}
			l.Batch, l.BufSize, l.RcvBuf, l.Ring = 16, 2048, 1, ring
			sock, err := l.ListenGRE(collector.name, 4)
			if err != nil {
				t.Fatalf("Linux.ListenGRE: %v", err)
			}
			s = sock
			tx, err := l.OpenSender(collector.name, netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1"), 64, false)
			if err != nil {
				t.Fatalf("OpenSender: %v", err)
			}
			rawGRE := func() int { return rawGRESockets(t, collector) }
			if n := rawGRE(); n != 2 {
				t.Errorf("%d raw GRE sockets with one receive socket and one sender, want 2 (the sender's socket is the guard)", n)
			}
			// The guard outlives the last sender: the overflow below
			// happens with none.
			tx.Close()
			if n := rawGRE(); n != 2 {
				t.Errorf("%d raw GRE sockets after the sender closed, want 2 (receive socket and guard)", n)
			}
		}
		defer s.Close()
		var sniff *packetSniffer
		var snd *greSender
		sender.do(t, func() {
			eth0, err := net.InterfaceByName("eth0")
			if err != nil {
				t.Fatal(err)
			}
			sniff = newPacketSniffer(t, eth0.Index)
			snd = newGRESender(t, net.IPv4(192, 0, 2, 2))
		})
		pkt := grePacket(erspan.ProtoERSPAN, true, 1, typeIIBody(1))
		for range 300 {
			snd.send(pkt)
		}
		icmp = sniff.await(time.Second, func(f []byte) bool { return isICMPv4(f, 3, 2, -1) }) != nil
		readGRE(t, s, 1, 5*time.Second)
		snd.send(pkt)
		readGRE(t, s, 1, 5*time.Second)
		return icmp, s.KernelDrops()
	}
	controlICMP, controlDrops := run(noGuard)
	if controlDrops == 0 {
		t.Fatal("the control run did not overflow the socket: the test proves nothing")
	}
	if !controlICMP {
		// Nothing for a guard to prevent: the guarded runs could not
		// fail, so they must not report a pass.
		t.Skip("this kernel sends no ICMP for a full raw socket even without the guard")
	}
	for mode, name := range map[int]string{ownGuard: "a guard of its own", sharedGuard: "the shared send socket as guard"} {
		icmp, drops := run(mode)
		if drops == 0 {
			t.Fatalf("%s: the guarded run did not overflow the socket", name)
		}
		if icmp {
			t.Errorf("%s: ICMP protocol unreachable sent while the receive socket overflowed", name)
		}
	}
}

// TestParseFrame: the sensor path takes Ethernet, up to two VLAN tags and
// IPv4 off a captured frame, and, since these packets never passed the IP
// stack's checks, drops one whose IPv4 header checksum is wrong.
func TestParseFrame(t *testing.T) {
	gre := grePacket(erspan.ProtoERSPAN, true, 1, typeIIBody(1))
	ipv4 := func() []byte {
		h := make([]byte, 20, 20+len(gre))
		h[0], h[8], h[9] = 0x45, 64, erspan.IPProtoGRE
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(gre)))
		copy(h[12:], []byte{192, 0, 2, 1, 198, 51, 100, 7})
		binary.BigEndian.PutUint16(h[10:], erspan.Checksum(h))
		return append(h, gre...)
	}
	eth := func(tags int, ip []byte) []byte {
		f := []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1}
		for range tags {
			f = append(f, 0x81, 0x00, 0x00, 0x05)
		}
		return append(append(f, 0x08, 0x00), ip...)
	}
	bad := ipv4()
	bad[10] ^= 0xff
	for _, c := range []struct {
		name string
		f    []byte
		want error
	}{
		{"plain", eth(0, ipv4()), nil},
		{"two VLAN tags", eth(2, ipv4()), nil},
		{"bad IPv4 header checksum", eth(0, bad), erspan.ErrIPHeader},
	} {
		var m Message
		parseFrame(c.f, false, &m)
		if m.Err != c.want {
			t.Errorf("%s: %v, want %v", c.name, m.Err, c.want)
			continue
		}
		if c.want == nil && (!bytes.Equal(m.GRE, gre) || m.Src != netip.MustParseAddr("192.0.2.1") || m.Dst != netip.MustParseAddr("198.51.100.7")) {
			t.Errorf("%s: %v -> %v, GRE % x", c.name, m.Src, m.Dst, m.GRE)
		}
	}
}

// TestSendCongested: when the egress link stays congested the shared send
// socket's buffer fills; SendBatch then drops the rest of its batch with
// ENOBUFS (what a raw socket says: it never waits for room) or EAGAIN (a
// wait outlasted sendTimeout), never blocking the transmit loop (and a
// Destroy behind it), and sends again once the link drains.
func TestSendCongested(t *testing.T) {
	sender, _ := vethPair(t)
	// 8 bits a second, a 10 MB queue: packets leave the socket for the
	// queue and stay there, charged to its send buffer.
	runIP(t, "-n", sender.name, "link", "set", "eth0", "txqueuelen", "100000")
	if out, err := exec.Command("tc", "-n", sender.name, "qdisc", "add", "dev", "eth0", "root",
		"tbf", "rate", "8bit", "burst", "1600", "limit", "10000000").CombinedOutput(); err != nil {
		t.Fatalf("tbf qdisc: %v: %s", err, out)
	}
	tx, pkts, tos := senderBatchIn(t, sender)
	// sendmmsg calls, counted: a refused batch must cost one or two (the
	// packets before the refusal, then the refusal), not one per packet.
	calls := countSendmmsg(tx)
	// Twice the send buffer (DefaultSndBuf) holds about ten thousand such
	// packets: bounded at 1000 batches, far more than it takes.
	total, congested := 0, false
	for range 1000 {
		*calls = 0
		sent, _, _, err := tx.SendBatch(pkts, tos)
		total += sent
		if err != nil {
			if !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) || sent == len(pkts) {
				t.Fatalf("SendBatch after %d packets: sent %d of %d, %v; want ENOBUFS or EAGAIN with the rest dropped", total, sent, len(pkts), err)
			}
			if *calls > 2 {
				t.Errorf("the refused batch took %d sendmmsg calls, want at most 2: the rest of the batch must be dropped", *calls)
			}
			congested = true
			break
		}
	}
	if !congested {
		t.Fatalf("%d packets sent into a link that passes 8 bits a second and none was refused", total)
	}
	// The default buffer (212 kB) took ~500 of these; DefaultSndBuf is there
	// so that one congested tunnel does not starve the others at once.
	if total < 2000 {
		t.Errorf("refused after %d packets: the send buffer is not DefaultSndBuf", total)
	}
	// The link drains: sending works again.
	if out, err := exec.Command("tc", "-n", sender.name, "qdisc", "del", "dev", "eth0", "root").CombinedOutput(); err != nil {
		t.Fatalf("remove the tbf qdisc: %v: %s", err, out)
	}
	if sent, _, _, err := tx.SendBatch(pkts[:1], tos); sent != 1 || err != nil {
		t.Errorf("SendBatch after the link drained: sent %d, %v", sent, err)
	}
}

// TestSendRefusedByFirewall: a packet the host's firewall refuses
// (sendmmsg fails it with EPERM) is skipped and reported, and the rest of
// the batch is sent: here nftables drops GRE with DSCP CS1 in the output
// hook, and a batch alternates TOS 0 and CS1.
func TestSendRefusedByFirewall(t *testing.T) {
	sender, collector := vethPair(t)
	nftRules(t, sender,
		"add table inet erspan_test",
		"add chain inet erspan_test out { type filter hook output priority 0; }",
		"add rule inet erspan_test out meta l4proto gre ip dscp cs1 drop")
	rx := listenGREIn(t, collector, 4, 16, 2048, 0, 0, false)
	tx, _, _ := senderBatchIn(t, sender)
	const cs1 = 8 << 2 // DSCP 8 in the TOS byte
	pkts, tos := seqGRE(0, 5), []uint8{0, cs1, 0, cs1, 0}
	sent, tooBig, nbytes, err := tx.SendBatch(pkts, tos)
	if sent != 3 || tooBig != 0 || !errors.Is(err, unix.EPERM) {
		t.Errorf("SendBatch of 5, 2 of them refused by the firewall: sent %d, too big %d, %v; want 3, 0, EPERM", sent, tooBig, err)
	}
	if want := uint64(len(pkts[0]) + len(pkts[2]) + len(pkts[4])); nbytes != want {
		t.Errorf("SendBatch counted %d bytes sent, want %d (the refused packets' not among them)", nbytes, want)
	}
	got := readGRE(t, rx, 3, 5*time.Second)
	for i, want := range []int{0, 2, 4} {
		if !bytes.Equal(got[i].gre, pkts[want]) {
			t.Errorf("packet %d received: % x, want packet %d, % x", i, got[i].gre, want, pkts[want])
		}
	}
}

// TestSendFromForeignSource: a tunnel source the namespace does not have
// is refused by the kernel for both families (as for Linux's own GRE
// tunnels), not sent from.
func TestSendFromForeignSource(t *testing.T) {
	sender, _ := vethPair(t)
	l, err := NewLinux()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ src, dst string }{{"192.0.2.99", "192.0.2.2"}, {"2001:db8::99", "2001:db8::2"}} {
		tx, err := l.OpenSender(sender.name, netip.MustParseAddr(c.src), netip.MustParseAddr(c.dst), 64, false)
		if err != nil {
			t.Fatalf("OpenSender: %v", err)
		}
		// A batch: refused whole in one sendmmsg, as the rest of a
		// batch that shares the source would fail the same way.
		calls := countSendmmsg(tx)
		pkt := grePacket(erspan.ProtoERSPAN, true, 1, typeIIBody(1))
		pkts := [][]byte{pkt, pkt, pkt, pkt, pkt, pkt, pkt, pkt}
		if sent, _, _, err := tx.SendBatch(pkts, make([]uint8, len(pkts))); sent != 0 || err == nil || *calls != 1 {
			t.Errorf("from %s, which the namespace lacks: sent %d, %v, %d sendmmsg calls; want refused, in one call", c.src, sent, err, *calls)
		}
		tx.Close()
	}
}

// TestLinuxBatch: Linux.Batch (erspand --rx-batch) bounds what one
// ReadBatch of a receive socket takes, a raw GRE socket's and a sensor's
// capture socket's alike: ten packets queued before the first read come
// in batches of at most three, and a batch of three.
func TestLinuxBatch(t *testing.T) {
	for _, kind := range []string{"GRE", "capture"} {
		t.Run(kind, func(t *testing.T) {
			sender, collector := vethPair(t)
			_, dst := socketTestAddrs(4)
			l, err := NewLinux()
			if err != nil {
				t.Fatal(err)
			}
			l.Batch = 3
			var sock Socket
			if kind == "GRE" {
				sock, err = l.ListenGRE(collector.name, 4)
			} else {
				// What comes in on eth0, from the sender's side of
				// the veth.
				sock, err = l.ListenCapture(collector.name, "eth0")
			}
			if err != nil {
				t.Fatalf("Linux.Listen%s: %v", kind, err)
			}
			defer sock.Close()
			var snd *greSender
			sender.do(t, func() { snd = newGRESender(t, net.IP(dst.AsSlice())) })
			pkts := make([][]byte, 10)
			for i := range pkts {
				pkts[i] = grePacket(erspan.ProtoERSPAN, true, uint32(i), typeIIBody(byte(i)))
			}
			// veth delivers in the sender's system call (its receive
			// softirq runs as the send returns), so all ten are queued
			// before the read.
			snd.send(pkts...)
			timer := time.AfterFunc(5*time.Second, func() { sock.Close() })
			defer timer.Stop()
			var sizes []int
			for total := 0; total < len(pkts); {
				msgs, err := sock.ReadBatch()
				if err != nil {
					t.Fatalf("ReadBatch after %d of %d packets (batches %v): %v", total, len(pkts), sizes, err)
				}
				for _, m := range msgs {
					if total == len(pkts) {
						t.Fatalf("more than the %d packets sent read (batches %v)", len(pkts), sizes)
					}
					if m.Err != nil || !bytes.Equal(m.GRE, pkts[total]) {
						t.Fatalf("packet %d: err %v, gre % x; want % x", total, m.Err, m.GRE, pkts[total])
					}
					total++
				}
				sizes = append(sizes, len(msgs))
			}
			if slices.Max(sizes) != 3 {
				t.Errorf("batches of %v packets, want at most 3 each and some of 3", sizes)
			}
		})
	}
}

// TestCaptureAllocs: a sensor's capture socket (AF_PACKET, its frames
// parsed down to the GRE payload with the IPv4 checksum verified) reads
// batches without allocating, also a read that gives a block back to the
// kernel and takes the next.
func TestCaptureAllocs(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenCaptureIn(t, collector, 4, 0, DefaultModerate) // 16 blocks
	sender.do(t, func() {
		snd := newGRESender(t, net.IPv4(192, 0, 2, 2))
		// Bursts of a batch, each given the time for the kernel's
		// retire timer (1 ms) to hand its block over, so that most
		// blocks hold one batch and the read after it moves on.
		for i := range 32 { // at most 4*2*4 = 32 are read
			snd.send(grePacket(erspan.ProtoERSPAN, true, uint32(i), typeIIBody(byte(i))))
			if i%4 == 3 {
				time.Sleep(5 * time.Millisecond)
			}
		}
	})
	timer := time.AfterFunc(5*time.Second, func() { s.Close() })
	defer timer.Stop()
	var errs, read, bad, moved int
	// AllocsPerRun counts no allocation of its first call and divides
	// the rest by runs as integers: an allocation per block would be
	// lost among 10 runs. So each read is measured alone, and whether
	// it took the next block is seen.
	for range 4 {
		var from int
		allocs := testing.AllocsPerRun(1, func() {
			from = s.r.cur
			msgs, err := s.ReadBatch()
			if err != nil {
				errs++
			}
			for _, m := range msgs {
				if m.Err != nil || len(m.GRE) == 0 {
					bad++
				}
			}
			read += len(msgs)
		})
		if s.r.cur != from {
			moved++
		}
		if allocs != 0 {
			t.Errorf("ReadBatch: %v allocations (block %d to %d)", allocs, from, s.r.cur)
		}
	}
	if errs > 0 || read == 0 || bad > 0 || moved == 0 {
		t.Fatalf("%d ReadBatch errors (the socket is closed after 5 s), %d packets read, %d not parsed, %d of the reads measured took the next block",
			errs, read, bad, moved)
	}
}

// TestTransmitAllocs: the transmit path's system calls, a TAP queue's
// ReadBatch (frames the host sends out of erspanN) and a sender's
// SendBatch (one sendmmsg), allocate nothing per batch; encap in between
// is TestEncapAllocs'.
func TestTransmitAllocs(t *testing.T) {
	sender, _ := vethPair(t)
	var q Queue
	var out int // a packet socket sending out of the TAP
	sender.do(t, func() {
		l := upTAP(t, "erspan5")
		var err error
		if q, err = OpenQueue("erspan5"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		if out, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(out) })
		// What is sent out of a link not yet ready is dropped.
		sender.waitReady(t, "erspan5")
		to := &unix.SockaddrLinklayer{Ifindex: l.Index}
		f := fakeFrame(1)
		for range 64 { // at most (runs+1)*4 = 44 are read
			if err := unix.Sendto(out, f, 0, to); err != nil {
				t.Fatalf("send out of the TAP: %v", err)
			}
		}
	})
	bufs, sizes := make([][]byte, 4), make([]int, 4)
	for i := range bufs {
		bufs[i] = make([]byte, txHeadroom+1518)
	}
	timer := time.AfterFunc(5*time.Second, func() { q.Close() })
	defer timer.Stop()
	var errs, read int
	allocs := testing.AllocsPerRun(10, func() {
		n, err := q.ReadBatch(bufs, sizes, txHeadroom)
		if err != nil {
			errs++
		}
		read += n
	})
	if errs > 0 || read == 0 {
		t.Fatalf("TAP ReadBatch: %d errors (the queue is closed after 5 s), %d frames read", errs, read)
	}
	if allocs != 0 {
		t.Errorf("TAP ReadBatch: %v allocations per batch", allocs)
	}

	tx, pkts, tos := senderBatchIn(t, sender)
	var sent, serrs int
	allocs = testing.AllocsPerRun(10, func() {
		n, _, _, err := tx.SendBatch(pkts, tos)
		if err != nil {
			serrs++
		}
		sent += n
	})
	if serrs > 0 || sent != 11*len(pkts) {
		t.Fatalf("SendBatch: %d errors, %d of %d sent", serrs, sent, 11*len(pkts))
	}
	if allocs != 0 {
		t.Errorf("SendBatch: %v allocations per batch", allocs)
	}
}

// countSendmmsg makes sender tx count its sendmmsg calls in the int it
// returns, which the test may reset.
func countSendmmsg(tx Sender) *int {
	rs := tx.(*rawSender)
	calls, send := new(int), rs.batchF
	rs.batchF = func(fd uintptr) { *calls++; send(fd) }
	return calls
}

// listenCaptureIn opens a capture socket on ns's eth0 (buffers of 2048
// bytes), closed when the test ends.
func listenCaptureIn(t *testing.T, ns *testNetns, batch, rcvbuf int, moderate time.Duration) *CaptureSocket {
	t.Helper()
	var s *CaptureSocket
	ns.do(t, func() {
		var err error
		if s, err = listenCapture("eth0", batch, 2048, rcvbuf, moderate, nil); err != nil {
			t.Fatalf("listenCapture: %v", err)
		}
	})
	t.Cleanup(func() { s.Close() })
	return s
}

// senderBatchIn opens a sender from the sender's 192.0.2.1 to 192.0.2.2
// (closed when the test ends) and returns it with a full batch of ERSPAN
// packets for it and their TOS values.
func senderBatchIn(t *testing.T, sender *testNetns) (Sender, [][]byte, []uint8) {
	t.Helper()
	l, err := NewLinux()
	if err != nil {
		t.Fatal(err)
	}
	tx, err := l.OpenSender(sender.name, netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), 64, false)
	if err != nil {
		t.Fatalf("OpenSender: %v", err)
	}
	t.Cleanup(func() { tx.Close() })
	pkts, tos := make([][]byte, senderBatch), make([]uint8, senderBatch)
	for i := range pkts {
		pkts[i] = grePacket(erspan.ProtoERSPAN, true, uint32(i), typeIIBody(byte(i)))
	}
	return tx, pkts, tos
}

// nftRules applies nft commands (each a line of nft's syntax) in ns, in
// order; the test fails at the first refused.
func nftRules(t *testing.T, ns *testNetns, rules ...string) {
	t.Helper()
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Fatalf("nft is not installed (scripts/test.sh installs nftables): %v", err)
	}
	for _, rule := range rules {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name, nft}, strings.Fields(rule)...)...).CombinedOutput(); err != nil {
			t.Fatalf("nft %s: %v: %s", rule, err, out)
		}
	}
}

// lendBatch sends seqGRE(0, 3) from sender to 192.0.2.2 and returns the
// batch s reads first (s is closed if none comes within 5 s).
func lendBatch(t *testing.T, sender *testNetns, s Socket) []Message {
	t.Helper()
	sender.do(t, func() { newGRESender(t, net.IPv4(192, 0, 2, 2)).send(seqGRE(0, 3)...) })
	timer := time.AfterFunc(5*time.Second, func() { s.Close() })
	defer timer.Stop()
	msgs, err := s.ReadBatch()
	if err != nil || len(msgs) == 0 {
		t.Fatalf("ReadBatch (the socket is closed after 5 s): %d messages, %v", len(msgs), err)
	}
	return msgs
}

// sockQueued says whether socket fd has a packet queued.
func sockQueued(fd int) bool {
	var b [1]byte
	_, _, err := unix.Recvfrom(fd, b[:], unix.MSG_DONTWAIT|unix.MSG_PEEK)
	return err != unix.EAGAIN
}

// TestOpenRawGREDrains: a packet a raw GRE socket queued before attach
// gave it its filter is gone once openRawGRE returns, dropped after a
// grace period (gracePeriod, which a packet the kernel was delivering as
// the filter was attached would need: no test makes that race happen at
// will). The packet goes to the namespace's own address, over loopback,
// which delivers it (to every raw GRE socket) before the send returns.
func TestOpenRawGREDrains(t *testing.T) {
	_, collector := vethPair(t)
	var sock int
	waited := false
	orig := gracePeriod
	t.Cleanup(func() { gracePeriod = orig })
	gracePeriod = func() {
		if !sockQueued(sock) {
			t.Error("the socket was drained before the grace period")
		}
		waited = true
		orig()
	}
	for _, family := range []int{4, 6} {
		_, self := socketTestAddrs(family)
		af := unix.AF_INET
		if family == 6 {
			af = unix.AF_INET6
		}
		collector.do(t, func() {
			snd := newGRESender(t, net.IP(self.AsSlice()))
			waited = false
			fd, err := openRawGRE(af, func(fd int) error {
				sock = fd
				snd.send(grePacket(erspan.ProtoTEB, false, 0, fakeFrame(1)))
				for deadline := time.Now().Add(time.Second); !sockQueued(fd); time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("IPv%d: the packet sent to this host is not queued on the new socket after 1 s", family)
					}
				}
				return attachDropAll(fd)
			})
			if err != nil {
				t.Fatalf("openRawGRE: %v", err)
			}
			defer unix.Close(fd)
			if sockQueued(fd) {
				t.Errorf("IPv%d: the packet queued before the filter is still queued", family)
			}
			if !waited {
				t.Errorf("IPv%d: openRawGRE drained without a grace period", family)
			}
		})
	}
}

// TestOpenUnderFlood: a raw GRE socket opened while GRE packets its
// filter refuses (TEB) pour in has none queued: those that came before
// the filter was attached, also those the kernel was delivering as it was
// attached, are dropped (openRawGRE). A ring's socket and a send socket
// are never read, so such a packet would hold the buffer until they
// close; recvmmsg would return it. Sockets are opened 20 in a row, so
// that packets come at every step. It checks the whole of each socket's
// setup under load; it does not make the race of a packet the kernel is
// delivering as the filter is attached happen (without the grace period
// it passes nearly always; 2000 opens a run caught it in 4 runs of 5).
// TestOpenRawGREDrains checks the drain and its grace period every time.
func TestOpenUnderFlood(t *testing.T) {
	listen := func(ring bool) func() (int, func(), error) {
		return func() (int, func(), error) {
			s, err := listenGREGuarded(4, 4, 2048, 0, 0, ring)
			if err != nil {
				return -1, nil, err
			}
			if r, ok := s.(*greRing); ok {
				return r.sock, func() { s.Close() }, nil
			}
			return s.(*GRESocket).c.fd, func() { s.Close() }, nil
		}
	}
	for _, c := range []struct {
		name string
		open func() (int, func(), error)
	}{
		{"recvmmsg", listen(false)},
		{"ring", listen(true)},
		{"send", func() (int, func(), error) {
			s, err := openSendSocket(4, false, 0)
			if err != nil {
				return -1, nil, err
			}
			fd := -1
			s.rc.Control(func(f uintptr) { fd = int(f) })
			return fd, func() { s.f.Close() }, nil
		}},
	} {
		t.Run(c.name, func(t *testing.T) { testOpenUnderFlood(t, c.open) })
	}
}

func testOpenUnderFlood(t *testing.T, open func() (int, func(), error)) {
	const opens = 20
	sender, collector := vethPair(t)
	var snd *greSender
	sender.do(t, func() { snd = newGRESender(t, net.IPv4(192, 0, 2, 2)) })
	stop, done := make(chan struct{}), make(chan struct{})
	var n atomic.Int64 // packets sent
	go func() {
		defer close(done)
		pkt := grePacket(erspan.ProtoTEB, false, 0, fakeFrame(1))
		// Bounded: 30 s at most, if the test never stops it.
		for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
			select {
			case <-stop:
				return
			default:
			}
			if unix.Sendto(snd.fd, pkt, 0, snd.to) == nil {
				n.Add(1)
			}
		}
	}()
	// The flood first: packets must come while each socket is set up.
	for deadline := time.Now().Add(5 * time.Second); n.Load() < 1000; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			close(stop)
			<-done
			t.Fatalf("the flood sent %d packets in 5 s", n.Load())
		}
	}
	var early int
	collector.do(t, func() {
		for range opens {
			fd, closeFn, err := open()
			if err != nil {
				close(stop)
				<-done
				t.Fatalf("open: %v", err)
			}
			// Packets the kernel was delivering as the socket was set
			// up are queued (or not) once a grace period has passed:
			// look after one.
			_ = membarrierGlobal()
			if sockQueued(fd) {
				early++
			}
			closeFn()
		}
	})
	close(stop)
	<-done
	if early > 0 {
		t.Errorf("%d of %d sockets opened under a flood of %d TEB packets have packets queued", early, opens, n.Load())
	}
}

// settledDrops is s's KernelDrops once it stops growing: veth delivers in
// the sender's system call, but should the receive softirq be deferred,
// the count grows for a while after the send returned.
func settledDrops(s Socket) int {
	drops := int(s.KernelDrops())
	for range 50 {
		time.Sleep(10 * time.Millisecond)
		d := int(s.KernelDrops())
		if d == drops {
			break
		}
		drops = d
	}
	return drops
}

// rawGRESockets counts the raw IPPROTO_GRE (47 = 0x2F) sockets in ns.
func rawGRESockets(t *testing.T, ns *testNetns) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns.name, "cat", "/proc/net/raw").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(out), ":002F ")
}

// mappingsAt counts the mappings in /proc/self/maps that start within mem
// and whose name begins with name: a ring's own, not those of earlier
// tests' rings, which the garbage collector unmaps at any time (a count of
// all mappings of a kind moves with them).
func mappingsAt(t *testing.T, mem []byte, name string) int {
	t.Helper()
	if len(mem) == 0 {
		return 0
	}
	return mappingsIn(t, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), name)
}

// mappingsIn is mappingsAt for the size bytes at addr.
func mappingsIn(t *testing.T, addr, size uintptr, name string) int {
	t.Helper()
	return mappingsWhere(t, func(start uintptr, n string) bool {
		return strings.HasPrefix(n, name) && start >= addr && start < addr+size
	})
}

// mappingsWhere counts the mappings in /proc/self/maps that keep takes,
// by start address and name (a file's path, "socket:[inode]", ...).
func mappingsWhere(t *testing.T, keep func(start uintptr, name string) bool) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		start, _, _ := strings.Cut(f[0], "-")
		if a, err := strconv.ParseUint(start, 16, 64); err == nil && keep(uintptr(a), f[5]) {
			n++
		}
	}
	return n
}

// TestRingsUnmappedByGC: a ring closed with a batch out and never read
// again (its reader gone) is unmapped once nothing refers to it: the
// garbage collector's cleanup (runtime.AddCleanup in newRing and
// openGRERing) is the backstop of mapped.close leaving a lent batch
// mapped.
func TestRingsUnmappedByGC(t *testing.T) {
	sender, collector := vethPair(t)
	for _, c := range []struct {
		name, mapping string
		open          func() (Socket, *mapped, error)
	}{
		{"GRE ring", "anon_inode:bpf-map", func() (Socket, *mapped, error) {
			s, err := listenGREGuarded(4, 64, 2048, 0, 0, true)
			if err != nil {
				return nil, nil, fmt.Errorf("listenGREGuarded: %v", err)
			}
			return s, &s.(*greRing).mapped, nil
		}},
		{"capture ring", "socket:[", func() (Socket, *mapped, error) {
			s, err := listenCapture("eth0", 64, 2048, 0, 0, nil)
			if err != nil {
				return nil, nil, err
			}
			return s, &s.r.mapped, nil
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// In a function of its own, so that no variable of this
			// one refers to the socket once it returns.
			addr, size := func() (uintptr, uintptr) {
				var s Socket
				var m *mapped
				collector.do(t, func() {
					var err error
					if s, m, err = c.open(); err != nil {
						t.Fatal(err)
					}
				})
				lendBatch(t, sender, s)
				if err := s.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
				if m.mem == nil {
					t.Fatal("Close unmapped the ring while a batch was out")
				}
				return uintptr(unsafe.Pointer(&m.mem[0])), uintptr(len(m.mem))
			}()
			if n := mappingsIn(t, addr, size, c.mapping); n == 0 {
				t.Fatal("no mapping of the closed ring before the garbage collection")
			}
			for deadline := time.Now().Add(5 * time.Second); mappingsIn(t, addr, size, c.mapping) > 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%d mappings of the unreachable ring left after 5 s of garbage collections", mappingsIn(t, addr, size, c.mapping))
				}
				runtime.GC()
			}
		})
	}
}

// checkLentAfterClose checks a ring closed while the batch msgs (of
// seqGRE(0, n) packets) was out: still mapped and readable; the next
// ReadBatch returns net.ErrClosed and unmaps it.
func checkLentAfterClose(t *testing.T, s Socket, m *mapped, msgs []Message) {
	t.Helper()
	if m.mem == nil {
		t.Fatal("Close unmapped the ring while a batch was out")
	}
	if want := seqGRE(0, 1)[0]; !bytes.Equal(msgs[0].GRE, want) {
		t.Errorf("after Close the first packet reads % x, want % x", msgs[0].GRE, want)
	}
	if _, err := s.ReadBatch(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadBatch after Close: %v, want net.ErrClosed", err)
	}
	if m.mem != nil {
		t.Error("the ring is still mapped after ReadBatch returned net.ErrClosed")
	}
}

// TestMembarrier: gracePeriod's membarrier works on this kernel (where it
// did not, every socket opened would sleep quiesceFallback instead). It
// checks the kernel, not that gracePeriod uses it: one that always slept
// the fallback would pass every test, slower.
func TestMembarrier(t *testing.T) {
	if err := membarrierGlobal(); err != nil {
		t.Errorf("membarrier(MEMBARRIER_CMD_GLOBAL): %v", err)
	}
}

// TestModerationSignalled: a signal to the sleeping reader's thread (Go's
// runtime sends its threads SIGURG to preempt) does not cut the
// moderation delay short; nanosleep is never restarted by the kernel.
func TestModerationSignalled(t *testing.T) {
	const delay = 100 * time.Millisecond
	m := moderation{moderate: delay, drained: true}
	took := make(chan time.Duration, 1)
	tid := goLocked(func() {
		start := time.Now()
		m.pause()
		took <- time.Since(start)
	})
	awaitSyscall(t, tid, unix.SYS_NANOSLEEP)
	for range 5 {
		if err := unix.Tgkill(unix.Getpid(), tid, unix.SIGURG); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d := <-took; d < delay {
		t.Errorf("the pause took %v with signals, want at least %v", d, delay)
	}
}
