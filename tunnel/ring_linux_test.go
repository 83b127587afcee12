package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// seqGRE returns n ERSPAN packets with GRE sequence numbers from first.
func seqGRE(first, n int) [][]byte {
	pkts := make([][]byte, n)
	for i := range pkts {
		pkts[i] = grePacket(erspan.ProtoERSPAN, true, uint32(first+i), typeIIBody(byte(first+i)))
	}
	return pkts
}

// checkSeq fails unless got are the packets with sequence numbers from
// first on, in order.
func checkSeq(t *testing.T, got []receivedGRE, first int) {
	t.Helper()
	for i, g := range got {
		if g.err != nil || len(g.gre) < 8 {
			t.Fatalf("packet %d of %d: %v, % x", i, len(got), g.err, g.gre)
		}
		if seq := int(binary.BigEndian.Uint32(g.gre[4:8])); seq != first+i {
			t.Fatalf("packet %d of %d has sequence number %d, want %d", i, len(got), seq, first+i)
		}
	}
}

// TestRingWraps: the capture socket's ring (16 blocks) carries 10,000
// packets, all of them, in order, none dropped: each block goes back to
// the kernel once read, round and round. Rounds of 100 packets: the
// kernel hands a block over after 1 ms even when it is nearly empty, so
// a round takes a block or two, and a 16-block ring would drop only if a
// round's sending took more than 16 ms. Each round waits for its own
// block, so the 100 rounds go through the 16 blocks several times.
func TestRingWraps(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenCaptureIn(t, collector, 64, 16*ringBlockSize, 0)
	if s.r.blocks != 16 || s.r.blockSize != ringBlockSize {
		t.Fatalf("ring of %d blocks of %d bytes, want 16 of %d", s.r.blocks, s.r.blockSize, ringBlockSize)
	}
	var snd *greSender
	sender.do(t, func() { snd = newGRESender(t, net.IPv4(192, 0, 2, 2)) })
	const rounds, per = 100, 100
	for r := range rounds {
		snd.send(seqGRE(r*per, per)...)
		checkSeq(t, readGRE(t, s, per, 5*time.Second), r*per)
	}
	if d := s.KernelDrops(); d != 0 {
		t.Errorf("KernelDrops = %d after %d packets read in rounds of %d", d, rounds*per, per)
	}
}

// TestRingOverflow: what a full ring cannot take is counted in
// KernelDrops, so that what was read and what was dropped add up to what
// was sent; and the ring takes packets again once read.
func TestRingOverflow(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenCaptureIn(t, collector, 64, 1, 0)
	var snd *greSender
	sender.do(t, func() { snd = newGRESender(t, net.IPv4(192, 0, 2, 2)) })
	const sent = 6000 // twice what the ring holds
	snd.send(seqGRE(0, sent)...)
	drops := settledDrops(s)
	if drops == 0 || drops >= sent {
		t.Fatalf("KernelDrops = %d after %d packets into a ring of ~2,700, unread", drops, sent)
	}
	// The ring keeps the first packets, in order.
	checkSeq(t, readGRE(t, s, sent-drops, 5*time.Second), 0)
	if d := int(s.KernelDrops()); d != drops {
		t.Errorf("KernelDrops went from %d to %d while the ring was read", drops, d)
	}
	snd.send(seqGRE(sent, 10)...)
	checkSeq(t, readGRE(t, s, 10, 5*time.Second), sent)
}

// TestRingCloseWhileLent: the packets of the last ReadBatch stay readable
// after Close (the receiver may still be writing them into TAPs when
// erspand closes the socket); the ring is unmapped by the next ReadBatch,
// which returns net.ErrClosed, or by Close itself when no batch is out.
func TestRingCloseWhileLent(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenCaptureIn(t, collector, 64, 0, 0)
	msgs := lendBatch(t, sender, s)
	promisc := func() (p int) {
		collector.do(t, func() { p = mustLinkByName(t, "eth0").Attrs().Promisc })
		return p
	}
	if promisc() != 1 {
		t.Fatal("eth0 is not promiscuous while captured")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The mapping keeps the socket alive, but it no longer captures.
	if promisc() != 0 {
		t.Error("eth0 still promiscuous after Close with a batch out")
	}
	checkLentAfterClose(t, s, &s.r.mapped, msgs)

	idle := listenCaptureIn(t, collector, 64, 0, 0)
	idle.Close()
	if idle.r.mem != nil {
		t.Error("Close of a ring with no batch out left it mapped")
	}
	// And Close unblocks a ReadBatch waiting for a block.
	waiting := listenCaptureIn(t, collector, 64, 0, 0)
	checkCloseUnblocks(t, "ReadBatch", unix.SYS_PPOLL, func() error { _, err := waiting.ReadBatch(); return err }, waiting.Close, net.ErrClosed)
	if waiting.r.mem != nil {
		t.Error("the ring is still mapped after its waiting ReadBatch returned net.ErrClosed")
	}
}

// TestRingLayout: blocks of 128 KiB unless a packet of bufSize bytes needs
// more; the ring's size from rcvbuf, at least minRingBlocks blocks.
func TestRingLayout(t *testing.T) {
	for _, c := range []struct{ bufSize, rcvbuf, blockSize, blocks int }{
		{2048, 0, ringBlockSize, defaultRingBytes / ringBlockSize},
		{DefaultBufSize, DefaultRcvBuf, ringBlockSize, DefaultRcvBuf / ringBlockSize},
		{DefaultBufSize, 1, ringBlockSize, minRingBlocks},
		{DefaultBufSize, ringBlockSize*10 + 1, ringBlockSize, 11},
		{ringBlockSize, 0, 2 * ringBlockSize, defaultRingBytes / (2 * ringBlockSize)},
		{ringBlockSize * 3, 0, 4 * ringBlockSize, minRingBlocks},
	} {
		bs, n := ringLayout(c.bufSize, c.rcvbuf)
		if bs != c.blockSize || n != c.blocks {
			t.Errorf("ringLayout(%d, %d) = %d blocks of %d, want %d of %d", c.bufSize, c.rcvbuf, n, bs, c.blocks, c.blockSize)
		}
	}
}

func TestRetireTimeout(t *testing.T) {
	for _, c := range []struct {
		moderate time.Duration
		ms       uint32
	}{{0, 1}, {DefaultModerate, 1}, {time.Millisecond, 1}, {1500 * time.Microsecond, 2}, {10 * time.Millisecond, 10}} {
		if got := retireTimeout(c.moderate); got != c.ms {
			t.Errorf("retireTimeout(%v) = %d ms, want %d", c.moderate, got, c.ms)
		}
	}
}

// TestRingLinkDown: when the captured link goes down the kernel flags the
// socket with ENETDOWN, which poll reports until it is read: ReadBatch
// returns it (once) rather than spin in poll, and reads on once the link
// is back.
func TestRingLinkDown(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenCaptureIn(t, collector, 64, 0, 0)
	readLinkDown(t, collector, s)
	runIP(t, "-n", collector.name, "link", "set", "eth0", "up")
	collector.waitReady(t, "eth0")
	sender.waitReady(t, "eth0")
	sender.do(t, func() { newGRESender(t, net.IPv4(192, 0, 2, 2)).send(seqGRE(0, 3)...) })
	checkSeq(t, readGRE(t, s, 3, 5*time.Second), 0)
}

// TestRingCloseAfterReadError: a read that failed (ENETDOWN) lent no
// batch, so Close unmaps the ring at once rather than leave it, and the
// socket its mapping holds, to the next read or the garbage collector.
func TestRingCloseAfterReadError(t *testing.T) {
	_, collector := vethPair(t)
	s := listenCaptureIn(t, collector, 64, 0, 0)
	readLinkDown(t, collector, s)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if s.r.mem != nil {
		t.Error("the ring is still mapped after Close, with no batch out")
	}
}

// readLinkDown takes eth0 of ns down under capture socket s and checks
// that s's next ReadBatch fails with ENETDOWN naming it (s is closed if
// none comes within 5 s).
func readLinkDown(t *testing.T, ns *testNetns, s *CaptureSocket) {
	t.Helper()
	runIP(t, "-n", ns.name, "link", "set", "eth0", "down")
	timer := time.AfterFunc(5*time.Second, func() { s.Close() })
	defer timer.Stop()
	if _, err := s.ReadBatch(); !errors.Is(err, unix.ENETDOWN) || !strings.Contains(err.Error(), "eth0") {
		t.Fatalf("ReadBatch with the link down: %v, want ENETDOWN naming eth0", err)
	}
}

// TestCaptureSetupFails: a capture that cannot be set up (no such
// interface index) leaves no ring mapped, which would keep the socket,
// and with it a promiscuous membership, alive after its close.
func TestCaptureSetupFails(t *testing.T) {
	requireRoot(t)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// This socket's mappings only: earlier tests' rings, closed with a
	// batch out, are unmapped by the garbage collector, at any time.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	blockSize, blocks := ringLayout(2048, 0)
	if _, err := setupCapture(fd, 1<<30, blockSize, blocks, 0); !errors.Is(err, unix.ENODEV) {
		t.Errorf("setupCapture on interface index 2^30: %v, want ENODEV", err)
	}
	link := fmt.Sprintf("socket:[%d]", st.Ino)
	if n := mappingsWhere(t, func(_ uintptr, name string) bool { return name == link }); n != 0 {
		t.Errorf("%d mappings of the socket after a failed setup, want none", n)
	}
}

// TestRingKeepsLentBlock: a block lent to the reader (its batch out) is
// not refilled by the kernel, however much arrives meanwhile.
func TestRingKeepsLentBlock(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenCaptureIn(t, collector, 64, 1, 0) // 4 blocks
	var snd *greSender
	sender.do(t, func() { snd = newGRESender(t, net.IPv4(192, 0, 2, 2)) })
	snd.send(seqGRE(0, 3)...)
	var msgs []Message
	for got := 0; got < 3; got += len(msgs) {
		var err error
		if msgs, err = s.ReadBatch(); err != nil {
			t.Fatal(err)
		}
	}
	held := make([][]byte, len(msgs))
	for i, m := range msgs {
		held[i] = bytes.Clone(m.GRE)
	}
	snd.send(seqGRE(3, 6000)...) // several times what the other 3 blocks hold
	for i, m := range msgs {
		if !bytes.Equal(m.GRE, held[i]) {
			t.Fatalf("message %d of the batch out changed under the reader: % x, was % x", i, m.GRE[:8], held[i][:8])
		}
	}
}

// TestRingVaryingLengths: packets of varying lengths, so that each one's
// place in the block (tp_next_offset, aligned) matters.
func TestRingVaryingLengths(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenCaptureIn(t, collector, 64, 0, 0)
	var snd *greSender
	sender.do(t, func() { snd = newGRESender(t, net.IPv4(192, 0, 2, 2)) })
	pkts := make([][]byte, 50)
	for i := range pkts {
		pkts[i] = grePacket(erspan.ProtoERSPAN, true, uint32(i), append(typeIIBody(byte(i)), make([]byte, i%8)...))
	}
	snd.send(pkts...)
	for i, g := range readGRE(t, s, len(pkts), 5*time.Second) {
		if !bytes.Equal(g.gre, pkts[i]) {
			t.Fatalf("packet %d: % x, want % x", i, g.gre, pkts[i])
		}
	}
}

// TestRingConfigReachesKernel: the ring the kernel has (sock_diag, as ss
// shows it) is the one asked for: 16 blocks of 128 KiB for the default
// 2 MiB, retired after 3 ms for a moderation of 3 ms.
func TestRingConfigReachesKernel(t *testing.T) {
	_, collector := vethPair(t)
	listenCaptureIn(t, collector, 4, 0, 3*time.Millisecond)
	out, err := exec.Command("ip", "netns", "exec", collector.name, "ss", "-0", "-e", "-a").CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v: %s", err, out)
	}
	m := regexp.MustCompile(`ring_rx\(blk_size:(\d+),blk_nr:(\d+),.*tmo:(\d+)`).FindStringSubmatch(string(out))
	if m == nil || m[3] != "3" || m[1] != fmt.Sprint(ringBlockSize) || m[2] != "16" {
		t.Errorf("ring as the kernel has it: %q, want 16 blocks of %d, tmo:3\n%s", m, ringBlockSize, out)
	}
}

// TestRingCloseReleasesAll: Close with no batch out leaves none of the
// socket's descriptors or its mapping.
func TestRingCloseReleasesAll(t *testing.T) {
	_, collector := vethPair(t)
	collector.do(t, func() {
		s, err := listenCapture("eth0", 4, 2048, 0, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(s.r.fd, &st); err != nil {
			t.Fatal(err)
		}
		link := fmt.Sprintf("socket:[%d]", st.Ino)
		mapped := func() bool { return mappingsWhere(t, func(_ uintptr, name string) bool { return name == link }) > 0 }
		fd, wake := s.r.fd, s.r.wake
		if !mapped() {
			t.Fatalf("%s not in /proc/self/maps", link)
		}
		s.Close()
		if fdOpen(fd) || fdOpen(wake) || mapped() {
			t.Errorf("after Close: socket open %v, eventfd open %v, ring mapped %v", fdOpen(fd), fdOpen(wake), mapped())
		}
	})
}

// TestRingFillLayout: fill on a ring laid out by hand, no kernel: a
// packet's data from tp_mac for tp_snaplen bytes, truncated when tp_len is
// more, its type from the sockaddr_ll after the header, the next packet at
// tp_next_offset (not where the last one ended), the next block after the
// last packet, and the finished block given back.
func TestRingFillLayout(t *testing.T) {
	const bs = 4096
	r := &ring{mapped: mapped{mem: make([]byte, 2*bs)}, blockSize: bs, blocks: 2}
	put := func(off int, v uint32) { binary.NativeEndian.PutUint32(r.mem[off:], v) }
	pkt := func(off int, next, snap, length uint32, pkttype byte, fill byte) {
		h := (*unix.Tpacket3Hdr)(unsafe.Pointer(&r.mem[off]))
		*h = unix.Tpacket3Hdr{Next_offset: next, Snaplen: snap, Len: length, Mac: 80}
		r.mem[off+pktAddrOff+10] = pkttype
		for i := range snap {
			r.mem[off+80+int(i)] = fill
		}
	}
	for b, n := range []uint32{2, 1} {
		put(b*bs+blockStatusOff, unix.TP_STATUS_USER)
		put(b*bs+blockPktsOff, n)
		put(b*bs+blockFirstOff, 48)
	}
	pkt(48, 136, 10, 10, unix.PACKET_HOST, 0xaa)     // next at 184, not 48+align8(90)=144
	pkt(184, 0, 5, 100, unix.PACKET_OUTGOING, 0xbb)  // truncated
	pkt(bs+48, 0, 7, 7, unix.PACKET_MULTICAST, 0xcc) // the next block
	want := []struct {
		data      []byte
		truncated bool
		pkttype   uint8
	}{
		{bytes.Repeat([]byte{0xaa}, 10), false, unix.PACKET_HOST},
		{bytes.Repeat([]byte{0xbb}, 5), true, unix.PACKET_OUTGOING},
		{bytes.Repeat([]byte{0xcc}, 7), false, unix.PACKET_MULTICAST},
	}
	out := make([]ringFrame, 1)
	for i, w := range want {
		n, err := r.fill(out)
		if err != nil || n != 1 {
			t.Fatalf("fill %d: %d, %v", i, n, err)
		}
		if f := out[0]; !bytes.Equal(f.data, w.data) || f.truncated != w.truncated || f.pkttype != w.pkttype {
			t.Errorf("frame %d: % x truncated %v type %d; want % x %v %d", i, f.data, f.truncated, f.pkttype, w.data, w.truncated, w.pkttype)
		}
	}
	if st := *r.status(0); st != unix.TP_STATUS_KERNEL {
		t.Errorf("block 0's status after its packets were read and the next block begun: %#x, want TP_STATUS_KERNEL", st)
	}
}

// TestRingWaitInterrupted: a signal to the reader's thread while it
// waits in ppoll (EINTR) is no error: the wait goes on.
func TestRingWaitInterrupted(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenCaptureIn(t, collector, 4, 0, 0)
	done := make(chan error, 1)
	id := goLocked(func() {
		_, err := s.ReadBatch()
		done <- err
	})
	awaitSyscall(t, id, unix.SYS_PPOLL)
	for range 3 {
		if err := unix.Tgkill(os.Getpid(), id, unix.SIGURG); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	sender.do(t, func() { newGRESender(t, net.IPv4(192, 0, 2, 2)).send(seqGRE(0, 1)...) })
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ReadBatch after its thread was signalled: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no packet within 5 s")
	}
}

// TestRingDropsSurviveClose: what the kernel dropped before Close is
// still counted after it (a closed socket has no statistics to read).
func TestRingDropsSurviveClose(t *testing.T) {
	sender, collector := vethPair(t)
	s := listenCaptureIn(t, collector, 64, 1, 0)
	sender.do(t, func() { newGRESender(t, net.IPv4(192, 0, 2, 2)).send(seqGRE(0, 6000)...) })
	s.Close()
	if d := s.KernelDrops(); d == 0 {
		t.Error("KernelDrops after Close: 0, after 6000 packets into a ring of ~2,700")
	}
}
