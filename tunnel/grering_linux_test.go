package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// listenRingIn opens a GRE socket with an eBPF ring in ns (batch packets
// of up to 2048 bytes, receive buffer rcvbuf), closed when the test ends.
func listenRingIn(t *testing.T, ns *testNetns, family, batch, rcvbuf int) *greRing {
	t.Helper()
	return listenGREIn(t, ns, family, batch, 2048, rcvbuf, 0, true).(*greRing)
}

// paddedSeqGRE is seqGRE with pad bytes more in each packet.
func paddedSeqGRE(first, n, pad int) [][]byte {
	pkts := seqGRE(first, n)
	for i := range pkts {
		pkts[i] = append(pkts[i], make([]byte, pad)...)
	}
	return pkts
}

func TestGRERingSize(t *testing.T) {
	for _, c := range []struct {
		rcvbuf, batch, bufSize int
		want                   uint64
	}{
		{DefaultRcvBuf, DefaultBatch, DefaultBufSize, 32 << 20}, // the receive buffer
		{0, DefaultBatch, DefaultBufSize, 2 << 20},              // the kernel's default: 2 MiB
		{1, 4, 2048, 1 << 20},                                   // at least 1 MiB
		{5 << 20, 1, 2048, 8 << 20},                             // rounded up to a power of two
		{0, MaxBatch, DefaultBufSize, 32 << 20},                 // two batches of the largest records
	} {
		if got := greRingSize(c.rcvbuf, c.batch, c.bufSize); got != c.want {
			t.Errorf("greRingSize(%d, %d, %d) = %d, want %d", c.rcvbuf, c.batch, c.bufSize, got, c.want)
		}
	}
}

// TestGRERingWraps: 12,000 packets through a 1 MiB ring in rounds of 100,
// all of them, in order, none dropped: the ring goes round more than
// twice. A record is 8 bytes of ring header, 8 of ours and the packet
// (here 1,000 bytes): 1,016 bytes, which does not divide the ring, so on
// every lap one record crosses the end and is read whole from the copy.
func TestGRERingWraps(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenRingIn(t, collector, 4, 64, 1)
	if s.size != 1<<20 {
		t.Fatalf("ring of %d bytes, want 1 MiB", s.size)
	}
	var snd *greSender
	sender.do(t, func() { snd = newGRESender(t, net.IPv4(192, 0, 2, 2)) })
	pad := 1000 - 20 - len(seqGRE(0, 1)[0]) // IPv4 header, GRE packet, padding: 1,000 bytes
	const rounds, per = 120, 100
	for r := range rounds {
		snd.send(paddedSeqGRE(r*per, per, pad)...)
		got := readGRE(t, s, per, 5*time.Second)
		checkSeq(t, got, r*per)
		for i, g := range got {
			if want := paddedSeqGRE(r*per+i, 1, pad)[0]; !bytes.Equal(g.gre, want) {
				t.Fatalf("packet %d differs from what was sent", r*per+i)
			}
		}
	}
	if s.pos < 2*s.size {
		t.Errorf("the ring went %d bytes round, less than twice its size", s.pos)
	}
	if d := s.KernelDrops(); d != 0 {
		t.Errorf("KernelDrops = %d after %d packets read in rounds of %d", d, rounds*per, per)
	}
}

// TestGRERingOverflow: what a full ring cannot take is counted in
// KernelDrops, so that what was read and what was dropped add up to what
// was sent; the kernel sends no ICMP for them (the socket took them, by
// its filter); and the ring takes packets again once read.
func TestGRERingOverflow(t *testing.T) {
	sender, collector := vethPair(t)
	w := watchUnreachable(t, sender, 4)
	s := listenRingIn(t, collector, 4, 64, 1)
	pad := 1000 - 20 - len(seqGRE(0, 1)[0])
	const sent = 2000 // twice what the 1 MiB ring holds
	w.snd.send(paddedSeqGRE(0, sent, pad)...)
	drops := settledDrops(s)
	if drops < 900 || drops >= sent {
		t.Fatalf("KernelDrops = %d after %d packets of 1,000 bytes into a ring of 1 MiB, unread", drops, sent)
	}
	// The ring keeps the first packets, in order.
	checkSeq(t, readGRE(t, s, sent-drops, 5*time.Second), 0)
	if d := int(s.KernelDrops()); d != drops {
		t.Errorf("KernelDrops went from %d to %d while the ring was read", drops, d)
	}
	w.snd.send(seqGRE(sent, 10)...)
	checkSeq(t, readGRE(t, s, 10, 5*time.Second), sent)
	if f := w.sniff.await(500*time.Millisecond, w.unreachable); f != nil {
		t.Errorf("the kernel answered with ICMP while the ring was full: % x", f)
	}
	// (The count at Close itself, drops since the last KernelDrops
	// included: TestGRERingDropsAtClose.)
}

// TestGRERingFirewall: the ring gets what the IP stack accepts, after the
// firewall's input hook: a packet nftables drops there (GRE sequence
// number 5) never reaches it, as it would never reach the socket.
func TestGRERingFirewall(t *testing.T) {
	bothReceivers(t, func(t *testing.T, ring bool) {
		sender, collector := vethPair(t)
		nftRules(t, collector,
			"add table inet erspan_test",
			"add chain inet erspan_test in { type filter hook input priority 0; }",
			// Bits 32 to 63 of the GRE header: its sequence number (C and K unset).
			"add rule inet erspan_test in meta l4proto gre @th,32,32 5 drop")
		s := listenGREIn(t, collector, 4, 16, 2048, 0, 0, ring)
		sender.do(t, func() { newGRESender(t, net.IPv4(192, 0, 2, 2)).send(seqGRE(0, 10)...) })
		got := readGRE(t, s, 9, 5*time.Second)
		checkSeq(t, got[:5], 0)
		checkSeq(t, got[5:], 6)
	})
}

// TestGRERingCloseWhileLent: the packets of the last ReadBatch stay
// readable after Close; the ring is unmapped by the next ReadBatch, which
// returns net.ErrClosed, or by Close itself when no batch is out; and
// Close leaves none of the socket's descriptors.
func TestGRERingCloseWhileLent(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenRingIn(t, collector, 4, 64, 0)
	msgs := lendBatch(t, sender, s)
	fds := []int{s.fd, s.wake, s.sock, s.dropsMap}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, fd := range fds {
		if fdOpen(fd) {
			t.Errorf("descriptor %d of %v still open after Close", fd, fds)
		}
	}
	checkLentAfterClose(t, s, &s.mapped, msgs)

	idle := listenRingIn(t, collector, 4, 64, 0)
	ringMapped := func() int { return mappingsAt(t, idle.mem, "anon_inode:bpf-map") }
	if n := ringMapped(); n != 2 {
		t.Fatalf("an open ring: %d bpf-map mappings at its address, want 2 (its consumer page, then producer page and data)", n)
	}
	idle.Close()
	if n := ringMapped(); idle.mem != nil || n != 0 {
		t.Errorf("Close of a ring with no batch out: mem %v, %d bpf-map mappings left at its address", idle.mem != nil, n)
	}
}

// TestGRERingAllocs: ReadBatch allocates nothing, also for a record that
// crosses the ring's end.
func TestGRERingAllocs(t *testing.T) {
	for _, family := range []int{4, 6} {
		sender, collector := vethPair(t)
		_, dst := socketTestAddrs(family)
		s := listenRingIn(t, collector, family, 4, 1)
		var snd *greSender
		sender.do(t, func() { snd = newGRESender(t, net.IP(dst.AsSlice())) })
		// Fill the ring to a batch (4 records, as in TestGRERingWraps)
		// before its end and read; then the record after that batch
		// crosses the end.
		pad := 1000 - 20 - len(seqGRE(0, 1)[0])
		rec := 1016 // IPv6: the addresses instead of the IPv4 header, rounded up to 8
		if family == 6 {
			rec = 1032
		}
		n := int(s.size)/rec - 4
		for first := 0; first < n; first += 100 {
			snd.send(paddedSeqGRE(first, min(100, n-first), pad)...)
			readGRE(t, s, min(100, n-first), 5*time.Second)
		}
		const runs = 10
		snd.send(paddedSeqGRE(n, 4*(2+runs+1), pad)...)
		timer := time.AfterFunc(5*time.Second, func() { s.Close() })
		var errs, read int
		readBatch := func() {
			msgs, err := s.ReadBatch()
			if err != nil {
				errs++
			}
			read += len(msgs)
		}
		// AllocsPerRun's first call is a warm-up it does not count (the
		// batch that fits), and it divides the count by runs as an
		// integer: one allocation for the crossing record in 10 runs
		// would read 0. So the crossing batch is measured alone.
		var before uint64 // where the measured read begins
		crossing := testing.AllocsPerRun(1, func() {
			before = s.pos
			readBatch()
		})
		if before/s.size == s.pos/s.size {
			t.Fatalf("IPv%d: the read measured did not cross the ring's end (%d to %d)", family, before, s.pos)
		}
		allocs := testing.AllocsPerRun(runs, readBatch)
		timer.Stop()
		if errs > 0 || read != 4*(2+runs+1) {
			t.Fatalf("IPv%d: %d ReadBatch errors (the socket is closed after 5 s), %d packets read", family, errs, read)
		}
		if crossing != 0 || allocs != 0 {
			t.Errorf("IPv%d: ReadBatch allocates %.0f times for the batch that crosses the ring's end, %.1f per call after it; want 0", family, crossing, allocs)
		}
	}
}

// TestGRERingFallback: where the kernel refuses the ring, the socket
// reads with recvmmsg, and RingError says why. (That it then takes a
// guard, as a recvmmsg socket's queue can overflow and a ring's cannot:
// TestGRERingNeedsNoGuard.)
func TestGRERingFallback(t *testing.T) {
	refused := fmt.Errorf("create eBPF map erspan_ring: %w", unix.EPERM)
	openRing = func(int, int, int, int, time.Duration) (*greRing, error) { return nil, refused }
	defer func() { openRing = openGRERing }()
	sender, collector := vethPair(t)
	var sock Socket
	collector.do(t, func() {
		var err error
		if sock, err = listenGRE(4, 16, 2048, 0, 0, true); err != nil {
			t.Fatalf("listenGRE with the ring refused: %v", err)
		}
		t.Cleanup(func() { sock.Close() })
	})
	s, ok := sock.(*GRESocket)
	if !ok || !errors.Is(s.RingError(), unix.EPERM) {
		t.Fatalf("ring refused: a %T; want a GRESocket (recvmmsg) whose RingError is the refusal", sock)
	}
	sender.do(t, func() { newGRESender(t, net.IPv4(192, 0, 2, 2)).send(seqGRE(0, 3)...) })
	checkSeq(t, readGRE(t, s, 3, 5*time.Second), 0)
}

// The ring's program refuses the same packets as the classic filter
// (testSocket, both receivers); this checks the one thing it adds on the
// way: a packet of exactly the buffer size is whole, one byte more is
// ErrShort.
func TestGRERingBufferEdge(t *testing.T) {
	for _, family := range []int{4, 6} {
		sender, collector := vethPair(t)
		src, dst := socketTestAddrs(family)
		s := listenGREIn(t, collector, family, 4, 512, 0, 0, true)
		// A raw IPv4 socket's packet includes the 20-byte header.
		size := 512
		if family == 4 {
			size -= 20
		}
		base := grePacket(erspan.ProtoERSPAN, true, 1, typeIIBody(1))
		exact := append(base, make([]byte, size-len(base))...)
		over := append(exact, 0)
		sender.do(t, func() { newGRESender(t, net.IP(dst.AsSlice())).send(exact, over) })
		got := readGRE(t, s, 2, 5*time.Second)
		if got[0].err != nil || !bytes.Equal(got[0].gre, exact) || got[0].src != src || got[0].dst != dst {
			t.Errorf("IPv%d: packet of the buffer's size: %v -> %v, err %v, %d bytes; want whole", family, got[0].src, got[0].dst, got[0].err, len(got[0].gre))
		}
		if got[1].err != erspan.ErrShort || got[1].src != src || got[1].dst != dst {
			t.Errorf("IPv%d: packet a byte over: %v -> %v, err %v; want ErrShort with the addresses", family, got[1].src, got[1].dst, got[1].err)
		}
	}
}

// TestGRERingNeedsNoGuard: a socket with a ring takes no guard (the
// namespace's shared send socket, open only while an interface sends), as
// it never overflows; with recvmmsg it holds one, also where the kernel
// refused the ring it asked for. TestGRERingOverflow and
// TestNoICMP/ring show the ring's socket alone keeps the kernel from
// answering with ICMP.
func TestGRERingNeedsNoGuard(t *testing.T) {
	_, collector := vethPair(t)
	rawGRE := func() int { return rawGRESockets(t, collector) }
	for _, c := range []struct {
		ring, refused bool
		want          int
	}{{true, false, 1}, {false, false, 2}, {true, true, 2}} {
		l, err := NewLinux()
		if err != nil {
			t.Fatal(err)
		}
		l.Ring = c.ring
		if c.refused { // the kernel refuses the ring: recvmmsg, with a guard
			openRing = func(int, int, int, int, time.Duration) (*greRing, error) { return nil, unix.EPERM }
		}
		s, err := l.ListenGRE(collector.name, 4)
		openRing = openGRERing
		if err != nil {
			t.Fatalf("Linux.ListenGRE: %v", err)
		}
		if n := rawGRE(); n != c.want {
			t.Errorf("ring %v, refused %v: %d raw GRE sockets in the namespace, want %d", c.ring, c.refused, n, c.want)
		}
		s.Close()
		if n := rawGRE(); n != 0 {
			t.Errorf("ring %v, refused %v: %d raw GRE sockets left after Close, want 0", c.ring, c.refused, n)
		}
	}
}

// TestGRERingReassembled: packets the IP stack reassembled from
// fragments (non-linear skbs) reach the ring whole, with their addresses,
// for both families and both receivers; IPv6 also behind a destination
// options header (GRE not right after the IPv6 header). Cut at the buffer
// size they are ErrShort with the addresses (IPv4).
func TestGRERingReassembled(t *testing.T) {
	bothReceivers(t, func(t *testing.T, ring bool) {
		for _, family := range []int{4, 6} {
			for _, dstopts := range []bool{false, true} {
				if family == 4 && dstopts {
					continue
				}
				sender, collector := vethPair(t)
				src, dst := socketTestAddrs(family)
				s := listenGREIn(t, collector, family, 8, 9344, 0, 0, ring)
				small := listenGREIn(t, collector, family, 8, 2048, 0, 0, ring)
				body := typeIIBody(9)
				for i := 0; len(body) < 6000; i++ {
					body = append(body, byte(i*7))
				}
				big := grePacket(erspan.ProtoERSPAN, true, 1, body)
				sender.do(t, func() {
					snd := newGRESender(t, net.IP(dst.AsSlice()))
					if dstopts {
						// Next header 0 (filled in), length 0 (8 bytes), PadN of 4.
						opt := "\x00\x00\x01\x04\x00\x00\x00\x00"
						if err := unix.SetsockoptString(snd.fd, unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, opt); err != nil {
							t.Fatalf("IPV6_DSTOPTS: %v", err)
						}
					}
					snd.send(big)
				})
				g := readGRE(t, s, 1, 5*time.Second)[0]
				collector.do(t, func() {
					proto, name := "Ip", "ReasmOKs"
					if family == 6 {
						proto, name = "", "Ip6ReasmOKs"
					}
					if snmpCounter(t, proto, name) == 0 {
						t.Errorf("IPv%d: the packet was not reassembled (%s 0)", family, name)
					}
				})
				if g.err != nil || !bytes.Equal(g.gre, big) || g.src != src || g.dst != dst {
					t.Errorf("ring %v IPv%d dstopts %v: %v -> %v err %v, %d bytes (want %d)", ring, family, dstopts, g.src, g.dst, g.err, len(g.gre), len(big))
				}
				g = readGRE(t, small, 1, 5*time.Second)[0]
				if g.err != erspan.ErrShort || (family == 4 && (g.src != src || g.dst != dst)) {
					t.Errorf("ring %v IPv%d dstopts %v, cut: %v -> %v err %v", ring, family, dstopts, g.src, g.dst, g.err)
				}
				if family == 6 && ring && (g.src != src || g.dst != dst) {
					t.Errorf("ring IPv6 dstopts %v, cut: %v -> %v, want the addresses", dstopts, g.src, g.dst)
				}
			}
		}
	})
}

// TestGRERingLargeBuffer: a buffer of 64 KiB (a whole IPv4 packet) is
// refused by the kernel (a per-CPU array's value is at most 32 KiB), and
// the refusal leaves no descriptor open.
func TestGRERingLargeBuffer(t *testing.T) {
	_, collector := vethPair(t)
	collector.do(t, func() {
		before := openFDs(t)
		r, err := openGRERing(4, 64, 65535, 0, 0)
		if err == nil {
			r.close()
			t.Fatal("openGRERing with a 64 KiB buffer: no error, want E2BIG from the scratch map")
		}
		if !errors.Is(err, unix.E2BIG) {
			t.Errorf("openGRERing with a 64 KiB buffer: %v, want E2BIG", err)
		}
		if n := openFDs(t); n != before {
			t.Errorf("descriptors: %d before, %d after the refusal", before, n)
		}
	})
}

// TestGRERingConcurrentDrops: KernelDrops from another goroutine
// while ReadBatch reads and waits, then Close while it waits (run with
// -race).
func TestGRERingConcurrentDrops(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenRingIn(t, collector, 4, 16, 1)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				s.KernelDrops()
			}
		}
	}()
	var snd *greSender
	sender.do(t, func() { snd = newGRESender(t, net.IPv4(192, 0, 2, 2)) })
	for r := 0; r < 20; r++ {
		snd.send(seqGRE(r*50, 50)...)
		checkSeq(t, readGRE(t, s, 50, 5*time.Second), r*50)
	}
	checkCloseUnblocks(t, "ReadBatch", unix.SYS_PPOLL, func() error { _, err := s.ReadBatch(); return err }, s.Close, net.ErrClosed)
	close(stop)
	<-done
	if d := s.KernelDrops(); d != 0 {
		t.Errorf("KernelDrops after Close = %d", d)
	}
}

// fakeRing is an IPv6 greRing with a data area of 4 KiB over anonymous
// memory, with no kernel behind it: put writes records and moves the
// producer position as the kernel would, so that a test can lay out what
// the program never makes (records being written, discarded ones). Its
// descriptor is an eventfd, readable once kick was called; sock and
// dropsMap are none.
type fakeRing struct {
	t    *testing.T
	r    *greRing
	prod uint64
	tid  int // the thread of the latest readAsync
}

func newFakeRing(t *testing.T, moderate time.Duration) *fakeRing {
	t.Helper()
	page := os.Getpagesize()
	const size = 4096
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(2*page+size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	mem := unsafe.Slice((*byte)(p), 2*page+size)
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unmapMem(mem)
		t.Fatal(err)
	}
	r := &greRing{mapped: mapped{mem: mem}, sock: -1, dropsMap: -1, family: 6, moderation: moderation{moderate: moderate},
		page: page, size: size, wrap: make([]byte, size)}
	if err := r.init(fd); err != nil {
		unmapMem(mem)
		unix.Close(fd)
		t.Fatal(err)
	}
	// Close unmaps mem unless a batch is out; then it stays mapped, 12 KiB
	// for the rest of the tests.
	t.Cleanup(func() { r.close() })
	return &fakeRing{t: t, r: r}
}

// put writes a record of GRE packet gre from 2001:db8::1 to 2001:db8::2,
// with flags (ringBusyBit, ringDiscardBit) in its header, and publishes
// it. It returns the record's header, for the test to commit it later.
func (f *fakeRing) put(flags uint32, gre []byte) *uint32 {
	src, dst := socketTestAddrs(6)
	rec := binary.NativeEndian.AppendUint32(nil, uint32(len(gre)))
	rec = append(append(append(append(rec, 0, 0, 0, 0), src.AsSlice()...), dst.AsSlice()...), gre...)
	data := f.r.mem[2*f.r.page:]
	off := f.prod & (f.r.size - 1)
	for i, c := range rec {
		data[(off+ringRecordHdr+uint64(i))&(f.r.size-1)] = c
	}
	hdr := (*uint32)(unsafe.Pointer(&data[off]))
	atomic.StoreUint32(hdr, uint32(len(rec))|flags)
	f.prod += (uint64(len(rec)) + ringRecordHdr + 7) &^ 7
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&f.r.mem[f.r.page])), f.prod)
	return hdr
}

// kick makes the ring's descriptor readable, as the kernel's wakeup.
func (f *fakeRing) kick() {
	one := [8]byte{1}
	if _, err := unix.Write(f.r.fd, one[:]); err != nil {
		f.t.Fatal(err)
	}
}

// readAsync reads a batch of up to n in a goroutine and sends its packets
// (nil on an error) and when read returned.
func (f *fakeRing) readAsync(n int) <-chan fakeRead {
	c := make(chan fakeRead, 1)
	msgs := make([]Message, n)
	f.tid = goLocked(func() {
		n, err := f.r.read(msgs)
		if err != nil {
			msgs = nil
		}
		c <- fakeRead{msgs[:n], time.Now()}
	})
	return c
}

type fakeRead struct {
	msgs []Message
	at   time.Time
}

// await returns what the read sent, within 5 seconds; otherwise it closes
// the ring (which ends the read) and fails.
func (f *fakeRing) await(c <-chan fakeRead, what string) fakeRead {
	f.t.Helper()
	select {
	case r := <-c:
		return r
	case <-time.After(5 * time.Second):
		f.r.close()
		f.t.Fatalf("%s: read did not return within 5 s", what)
		return fakeRead{}
	}
}

// checkFakeSeq fails unless msgs are the packets of seqGRE from first on,
// from the fake ring's addresses.
func checkFakeSeq(t *testing.T, what string, msgs []Message, first, n int) {
	t.Helper()
	src, dst := socketTestAddrs(6)
	if len(msgs) != n {
		t.Fatalf("%s: read %d packets, want %d", what, len(msgs), n)
	}
	for i, m := range msgs {
		if m.Err != nil || m.Src != src || m.Dst != dst || !bytes.Equal(m.GRE, seqGRE(first+i, 1)[0]) {
			t.Errorf("%s: packet %d: %v -> %v, %v, % x; want packet %d of seqGRE", what, i, m.Src, m.Dst, m.Err, m.GRE, first+i)
		}
	}
}

// TestGRERingRecordBits: read follows the ring buffer's protocol where
// the program never puts it to the test: a record still being written
// (busy bit: reserved on one CPU while a later one, from another, is
// committed) stops the batch until it is committed, and a discarded one
// is skipped, its length without the flag bits.
func TestGRERingRecordBits(t *testing.T) {
	f := newFakeRing(t, 0)
	f.put(ringDiscardBit, seqGRE(0, 1)[0])
	busy := f.put(ringBusyBit, seqGRE(1, 1)[0])
	f.put(0, seqGRE(2, 1)[0])
	c := f.readAsync(4)
	select {
	case r := <-c:
		t.Fatalf("read returned %d packets while the first was still being written", len(r.msgs))
	case <-time.After(50 * time.Millisecond):
	}
	atomic.StoreUint32(busy, atomic.LoadUint32(busy)&^ringBusyBit)
	checkFakeSeq(t, "once committed", f.await(c, "once committed").msgs, 1, 2)
}

// TestGRERingModeration: as with recvmmsg (batchConn), a read after one
// that left the ring empty sleeps the moderation delay first, for packets
// to gather; one after a full batch does not, nor one that waited in the
// kernel for the ring's first record.
func TestGRERingModeration(t *testing.T) {
	// Long enough that a loaded machine's scheduling delays stay well
	// under half of it, which the upper bounds below allow.
	const moderate = 200 * time.Millisecond
	f := newFakeRing(t, moderate)
	for i := range 3 {
		f.put(0, seqGRE(i, 1)[0])
	}
	checkFakeSeq(t, "first batch", f.await(f.readAsync(2), "first batch").msgs, 0, 2)
	start := time.Now()
	r := f.await(f.readAsync(2), "after a full batch")
	checkFakeSeq(t, "after a full batch", r.msgs, 2, 1)
	if d := r.at.Sub(start); d >= moderate/2 {
		t.Errorf("read after a full batch took %v, want no moderation delay (%v)", d, moderate)
	}
	f.put(0, seqGRE(3, 1)[0])
	start = time.Now()
	r = f.await(f.readAsync(2), "after a partial batch")
	checkFakeSeq(t, "after a partial batch", r.msgs, 3, 1)
	if d := r.at.Sub(start); d < moderate {
		t.Errorf("read after a partial batch took %v, want at least the moderation delay (%v)", d, moderate)
	}
	// The ring is empty: the read waits in the kernel (moderation first,
	// as the last batch was partial).
	c := f.readAsync(2)
	awaitSyscall(t, f.tid, unix.SYS_PPOLL)
	f.put(0, seqGRE(4, 1)[0])
	start = time.Now()
	f.kick()
	r = f.await(c, "woken")
	checkFakeSeq(t, "woken", r.msgs, 4, 1)
	if d := r.at.Sub(start); d >= moderate/2 {
		t.Errorf("read woken for a record took %v after the wakeup, want no moderation delay (%v)", d, moderate)
	}
}

// TestBatchConnModeration: recvmmsg's reader moderates as the ring's
// (TestGRERingModeration), through the same type: a read after one that
// emptied the queue sleeps the delay first; one after a full batch does
// not, nor one woken by the kernel. On a datagram socket pair.
func TestBatchConnModeration(t *testing.T) {
	const moderate = 200 * time.Millisecond
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	c, err := newBatchConn(fds[0], 2, 64, 8, nil, moderate)
	if err != nil {
		unix.Close(fds[0])
		t.Fatal(err)
	}
	defer c.close(nil)
	put := func(n int) {
		for i := range n {
			if _, err := unix.Write(fds[1], []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	type result struct {
		n  int
		at time.Time
	}
	var tid int // the thread of the latest readAsync
	readAsync := func() chan result {
		ch := make(chan result, 1)
		tid = goLocked(func() {
			n, err := c.read()
			if err != nil {
				t.Errorf("read: %v", err)
			}
			ch <- result{n, time.Now()}
		})
		return ch
	}
	await := func(ch chan result, what string, want int) result {
		t.Helper()
		select {
		case r := <-ch:
			if r.n != want {
				t.Fatalf("%s: %d messages, want %d", what, r.n, want)
			}
			return r
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no read within 5 s", what)
			return result{}
		}
	}
	put(3)
	await(readAsync(), "first batch", 2)
	start := time.Now()
	if r := await(readAsync(), "after a full batch", 1); r.at.Sub(start) >= moderate/2 {
		t.Errorf("read after a full batch took %v, want no moderation delay (%v)", r.at.Sub(start), moderate)
	}
	put(1)
	start = time.Now()
	if r := await(readAsync(), "after a partial batch", 1); r.at.Sub(start) < moderate {
		t.Errorf("read after a partial batch took %v, want at least the moderation delay (%v)", r.at.Sub(start), moderate)
	}
	// Empty: the read waits in the kernel (after its moderation delay).
	ch := readAsync()
	awaitSyscall(t, tid, unix.SYS_PPOLL)
	start = time.Now()
	put(1)
	if r := await(ch, "woken", 1); r.at.Sub(start) >= moderate/2 {
		t.Errorf("read woken for a message took %v, want no moderation delay (%v)", r.at.Sub(start), moderate)
	}
}

// TestGRERingQueuesNothing: a ring's socket queues no packet, whether its
// program puts it in the ring or refuses it (TEB, IPv4 in GRE): the socket
// is never read, so what it queued would hold its receive buffer until it
// closes. (Nor one that came while it was set up: TestOpenUnderFlood.)
func TestGRERingQueuesNothing(t *testing.T) {
	queued := func(s *greRing) bool { return sockQueued(s.sock) }
	for _, family := range []int{4, 6} {
		sender, collector := vethPair(t)
		_, dst := socketTestAddrs(family)
		s := listenRingIn(t, collector, family, 8, 0)
		erspan2 := grePacket(erspan.ProtoERSPAN, true, 1, typeIIBody(1))
		teb := grePacket(erspan.ProtoTEB, false, 0, fakeFrame(2))
		ipv4 := grePacket(unix.ETH_P_IP, false, 0, []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 9, 192, 0, 2, 10})
		erspan3 := grePacket(erspan.ProtoERSPAN3, true, 2, typeIIIBody(4))
		sender.do(t, func() { newGRESender(t, net.IP(dst.AsSlice())).send(erspan2, teb, ipv4, erspan3) })
		readGRE(t, s, 2, 5*time.Second)
		if queued(s) {
			t.Errorf("IPv%d: the ring's socket has packets queued", family)
		}
	}
}

// TestGRERingCloseLeavesNoDescriptor: a ring's socket holds, once open,
// only what Close closes (not the program's, nor its scratch map's).
func TestGRERingCloseLeavesNoDescriptor(t *testing.T) {
	_, collector := vethPair(t)
	for _, family := range []int{4, 6} {
		collector.do(t, func() {
			before := openFDs(t)
			s, err := listenGREGuarded(family, 4, 2048, 0, 0, true)
			if err != nil {
				t.Fatalf("listenGREGuarded: %v", err)
			}
			s.Close()
			if after := openFDs(t); after != before {
				t.Errorf("IPv%d: %d descriptors open after a ring's socket was opened and closed, %d before", family, after, before)
			}
		})
	}
}

// TestGRERingDropsAtClose: Close keeps the drop count as it is then,
// also the drops since KernelDrops last looked.
func TestGRERingDropsAtClose(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenRingIn(t, collector, 4, 64, 1)
	if d := s.KernelDrops(); d != 0 {
		t.Fatalf("KernelDrops = %d before any packet", d)
	}
	pad := 1000 - 20 - len(seqGRE(0, 1)[0])
	sender.do(t, func() { newGRESender(t, net.IPv4(192, 0, 2, 2)).send(paddedSeqGRE(0, 2000, pad)...) })
	s.Close()
	if d := s.KernelDrops(); d < 900 {
		t.Errorf("KernelDrops after Close = %d, want the some 1,000 of 2,000 packets of 1,000 bytes a ring of 1 MiB had no room for", d)
	}
}

// withoutCaps runs fn on an OS thread of its own, in namespace ns (nil:
// the test process's, for what needs none, and so no root), whose
// effective capabilities lack caps (capabilities are per thread). The
// thread is never unlocked, so the runtime ends it with fn's goroutine
// rather than reuse it.
func withoutCaps(t *testing.T, ns *testNetns, caps []uint, fn func()) {
	t.Helper()
	failed := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var err error
		if ns != nil {
			// Before the capabilities go: setns wants CAP_SYS_ADMIN.
			err = netns.Set(ns.h)
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err == nil {
			err = unix.Capget(&hdr, &data[0])
		}
		if err == nil {
			for _, c := range caps {
				data[c/32].Effective &^= 1 << (c % 32)
			}
			err = unix.Capset(&hdr, &data[0])
		}
		if err == nil {
			fn()
		}
		failed <- err
	}()
	if err := <-failed; err != nil {
		t.Fatalf("drop capabilities %v: %v", caps, err)
	}
}

// TestGRERingErrorHints: a refusal for want of privilege names the
// capability it wants: CAP_NET_RAW for the raw socket, which the ring's
// CAP_BPF and memlock hint must not blame; CAP_BPF for the ring's maps
// and program, where the kernel refuses unprivileged BPF.
func TestGRERingErrorHints(t *testing.T) {
	// In a namespace of its own: should the capabilities not be missed,
	// the ring opened is there, not in the host's.
	ns := newTestNetns(t)
	open := func(caps ...uint) (err error) {
		withoutCaps(t, ns, caps, func() {
			var r *greRing
			if r, err = openGRERing(4, 4, 2048, 0, 0); err == nil {
				r.Close()
			}
		})
		return err
	}
	err := open(unix.CAP_NET_RAW)
	if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "CAP_NET_RAW") || strings.Contains(err.Error(), "CAP_BPF") {
		t.Errorf("without CAP_NET_RAW: %v; want EPERM naming CAP_NET_RAW, not CAP_BPF", err)
	}
	t.Run("bpf", func(t *testing.T) {
		if b, _ := os.ReadFile("/proc/sys/kernel/unprivileged_bpf_disabled"); strings.TrimSpace(string(b)) == "0" {
			t.Skip("kernel.unprivileged_bpf_disabled is 0: the ring needs no capability here")
		}
		err := open(unix.CAP_BPF, unix.CAP_SYS_ADMIN)
		if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "CAP_BPF") {
			t.Errorf("without CAP_BPF and CAP_SYS_ADMIN: %v; want EPERM naming CAP_BPF", err)
		}
	})
}

// TestGRERingDropsFromCPUs: a full ring counts every packet it drops
// while the receive softirqs of two CPUs drop them at the same time (veth
// runs the receive on the sending CPU). The count is one slot shared by
// every CPU, so its add must be atomic: a load, add and store there lost
// a few dozen counts in every run.
func TestGRERingDropsFromCPUs(t *testing.T) {
	var online unix.CPUSet
	if err := unix.SchedGetaffinity(0, &online); err != nil {
		t.Fatal(err)
	}
	if online.Count() < 2 || !online.IsSet(0) || !online.IsSet(1) {
		t.Skipf("needs CPUs 0 and 1 to send from; this process may run on %d CPUs", online.Count())
	}
	sender, collector := vethPair(t)
	s := listenRingIn(t, collector, 4, 64, 1)
	pad := 1000 - 20 - len(seqGRE(0, 1)[0])
	// The 1 MiB ring holds about 1,000 of the first packets; of the
	// small ones after them, at most a few more.
	const fill, each = 1100, 100_000
	var snds [2]*greSender
	sender.do(t, func() {
		for i := range snds {
			snds[i] = newGRESender(t, net.IPv4(192, 0, 2, 2))
		}
		snds[0].send(paddedSeqGRE(0, fill, pad)...)
	})
	// A socket stays in the namespace it was made in: the senders work
	// from any thread.
	pkt := seqGRE(fill, 1)[0]
	var errs [2]error
	var wg sync.WaitGroup
	for cpu := range 2 {
		wg.Go(func() {
			// Locked to the end: the thread, with its affinity, ends
			// with the goroutine.
			runtime.LockOSThread()
			var one unix.CPUSet
			one.Set(cpu)
			if errs[cpu] = unix.SchedSetaffinity(0, &one); errs[cpu] != nil {
				return
			}
			for range each {
				if errs[cpu] = unix.Sendto(snds[cpu].fd, pkt, 0, snds[cpu].to); errs[cpu] != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	for cpu, err := range errs {
		if err != nil {
			t.Fatalf("send from CPU %d: %v", cpu, err)
		}
	}
	sent := fill + 2*each
	drops := settledDrops(s)
	if drops <= each {
		t.Errorf("%d drops of %d packets sent into a full ring from each of two CPUs: want those of both", drops, each)
	}
	held := len(readGRE(t, s, sent-drops, 5*time.Second))
	if held+drops != sent {
		t.Errorf("%d packets read and %d counted dropped of %d sent", held, drops, sent)
	}
}

// TestGRERingWakesReader: a reader waiting in the kernel for an empty
// ring (ppoll) is woken by the program's output of the next packet (the
// kernel wakes it as it has caught up; with BPF_RB_NO_WAKEUP it would
// sleep until something else came).
func TestGRERingWakesReader(t *testing.T) {
	for _, family := range []int{4, 6} {
		sender, collector := vethPair(t)
		_, dst := socketTestAddrs(family)
		s := listenRingIn(t, collector, family, 8, 0)
		done := make(chan error, 1)
		tid := goLocked(func() {
			_, err := s.ReadBatch()
			done <- err
		})
		awaitSyscall(t, tid, unix.SYS_PPOLL)
		sender.do(t, func() { newGRESender(t, net.IP(dst.AsSlice())).send(seqGRE(0, 1)...) })
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("IPv%d: ReadBatch: %v", family, err)
			}
		case <-time.After(2 * time.Second):
			s.Close()
			<-done
			t.Errorf("IPv%d: a reader waiting on the empty ring not woken within 2 s of a packet", family)
		}
	}
}
