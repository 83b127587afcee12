package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

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
	drops := int(s.KernelDrops())
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
	sender.do(t, func() { newGRESender(t, net.IPv4(192, 0, 2, 2)).send(seqGRE(0, 3)...) })
	msgs, err := s.ReadBatch()
	if err != nil || len(msgs) == 0 {
		t.Fatalf("ReadBatch: %d messages, %v", len(msgs), err)
	}
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
	if s.r.mem == nil {
		t.Fatal("Close unmapped the ring while a batch was out")
	}
	// The mapping keeps the socket alive, but it no longer captures.
	if promisc() != 0 {
		t.Error("eth0 still promiscuous after Close with a batch out")
	}
	if want := seqGRE(0, 1)[0]; !bytes.Equal(msgs[0].GRE, want) {
		t.Errorf("after Close the first packet reads % x, want % x", msgs[0].GRE, want)
	}
	if _, err := s.ReadBatch(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadBatch after Close: %v, want net.ErrClosed", err)
	}
	if s.r.mem != nil {
		t.Error("the ring is still mapped after ReadBatch returned net.ErrClosed")
	}

	idle := listenCaptureIn(t, collector, 64, 0, 0)
	idle.Close()
	if idle.r.mem != nil {
		t.Error("Close of a ring with no batch out left it mapped")
	}
	// And Close unblocks a ReadBatch waiting for a block.
	waiting := listenCaptureIn(t, collector, 64, 0, 0)
	checkCloseUnblocks(t, "ReadBatch", func() error { _, err := waiting.ReadBatch(); return err }, waiting.Close, net.ErrClosed)
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
	runIP(t, "-n", collector.name, "link", "set", "eth0", "down")
	timer := time.AfterFunc(5*time.Second, func() { s.Close() })
	defer timer.Stop()
	if _, err := s.ReadBatch(); !errors.Is(err, unix.ENETDOWN) {
		t.Fatalf("ReadBatch with the link down: %v, want ENETDOWN", err)
	}
	runIP(t, "-n", collector.name, "link", "set", "eth0", "up")
	collector.waitReady(t, "eth0")
	sender.waitReady(t, "eth0")
	sender.do(t, func() { newGRESender(t, net.IPv4(192, 0, 2, 2)).send(seqGRE(0, 3)...) })
	checkSeq(t, readGRE(t, s, 3, 5*time.Second), 0)
}

// TestCaptureSetupFails: a capture that cannot be set up (no such
// interface index) leaves no ring mapped, which would keep the socket,
// and with it a promiscuous membership, alive after its close.
func TestCaptureSetupFails(t *testing.T) {
	requireRoot(t)
	mapped := func() int {
		b, err := os.ReadFile("/proc/self/maps")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), " socket:[")
	}
	before := mapped()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	blockSize, blocks := ringLayout(2048, 0)
	if _, err := setupCapture(fd, 1<<30, blockSize, blocks, 0); !errors.Is(err, unix.ENODEV) {
		t.Errorf("setupCapture on interface index 2^30: %v, want ENODEV", err)
	}
	if n := mapped(); n != before {
		t.Errorf("%d socket mappings after a failed setup, %d before", n, before)
	}
}
