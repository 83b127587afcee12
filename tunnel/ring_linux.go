package tunnel

import (
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ring is the receive half of a CaptureSocket: a TPACKET_V3 receive ring
// (packet_mmap.rst) shared with the kernel, read by one goroutine at a
// time.
//
// A sensor's packets go to an AF_PACKET socket. Read with recvmmsg, each
// costs the reader a dequeue, a copy and the free of its skb; with a ring
// the kernel copies the packet into the shared memory as it receives it,
// in its receive softirq, and frees the skb there, so the reader pays for
// nothing but its own work on the frame. Measured with the bench's
// generator at 64 B (erspand's CPU only; the softirq ran on the
// generator's): 417k frames per CPU-second with recvmmsg, 733k to 848k
// with the ring, where one write() per frame into a TAP alone does 718k
// to 858k.
//
// TPACKET_V3 rather than V2: packets are packed into blocks as they come
// (a 64-byte frame takes ~180 bytes of the ring, not a fixed slot sized
// for the largest), so the same memory holds ~50 times more small frames;
// and the kernel wakes the reader once per block, not per packet, which
// is the interrupt moderation batchConn does with a sleep. A block goes
// to the reader when it is full or at the kernel's retire timer (every
// tp_retire_blk_tov milliseconds; it hands over the block that was
// current for a whole period): up to two periods of added latency at low
// rates; on 6.18 (an hrtimer) single packets took 0.5 to 1.1 ms at 1 ms.
// Before 6.18 the timer counts jiffies, so 1 ms is one jiffy: 4 ms at
// HZ=250, up to ~8 ms of latency. A block handed over early is not
// filled further, so at low rates the ring holds the packets of as many
// periods as it has blocks, not its size in bytes (TestRingWraps).
//
// The ring's memory is what the messages of a batch point into (mapped).
// A mapping holds the socket: until it goes, closing fd does not release
// the socket (CaptureSocket.Close stops it capturing first).
type ring struct {
	mapped

	blockSize int
	blocks    int
	cur       int    // the block read now or next
	open      bool   // cur is the reader's: packets of it were handed out
	left      uint32 // packets of cur not yet handed out
	next      int    // offset in mem of cur's next packet
}

// mapped is what the two rings (ring, greRing) share: a pollFD whose
// reader reads memory shared with the kernel in place, handing out
// batches that point into it.
//
// The memory must outlive the batch: it is unmapped by close when no read
// is under way or lent, otherwise by the reader's next read (which then
// returns net.ErrClosed). As a last resort a ring closed with a batch out
// and never read again is unmapped when it becomes garbage; one never
// closed keeps its descriptors (only close may close them: a number the
// cleanup held could be reused by then).
type mapped struct {
	pollFD

	// busy is true from the first read until a read returns an error:
	// the batch a read returned is in use until the next read. Only the
	// reader writes it, holding fdmu shared; close reads it holding fdmu
	// exclusively, and so does the unmap of mem.
	busy bool
	mem  []byte // nil once unmapped
	// cleanup unmaps mem if the ring becomes unreachable still mapped.
	cleanup runtime.Cleanup
}

// read runs fill, the reader's work, with fdmu held shared, keeping track
// of the batch it lends.
func (m *mapped) read(fill func() (int, error)) (int, error) {
	// Deferred: should fill panic, a close waiting for the lock would
	// otherwise hang its caller.
	m.fdmu.RLock()
	defer m.fdmu.RUnlock()
	m.busy = true
	n, err := fill()
	if err != nil {
		m.busy = false
		if m.closed.Load() {
			m.unmap()
		}
	}
	return n, err
}

// close closes the descriptor (pollFD.close, running locked first: what
// must stop before a lent mapping outlives it) and unmaps the memory
// unless a batch is out, which the reader's next read then does. A second
// close returns net.ErrClosed.
func (m *mapped) close(locked func()) error {
	return m.pollFD.close(func() {
		locked()
		if !m.busy {
			m.unmap()
		}
	})
}

// unmap releases the memory once; fdmu is held (exclusively, or shared by
// the reader once closed).
func (m *mapped) unmap() {
	if m.mem != nil {
		m.cleanup.Stop()
		unmapMem(m.mem)
		m.mem = nil
	}
}

// unmapMem unmaps a ring's memory (mapped with unix.MmapPtr).
func unmapMem(mem []byte) { _ = unix.MunmapPtr(unsafe.Pointer(&mem[0]), uintptr(len(mem))) }

// ringFrame is one packet as the ring holds it.
type ringFrame struct {
	data      []byte // from the MAC header on, as far as it was copied
	truncated bool   // the packet did not fit the block
	pkttype   uint8  // sockaddr_ll's sll_pkttype: PACKET_OUTGOING and so on
}

// Offsets into the ring (linux/if_packet.h). A block begins with struct
// tpacket_block_desc: version, offset_to_priv, then struct tpacket_hdr_v1
// whose first fields are block_status, num_pkts, offset_to_first_pkt. A
// packet begins with struct tpacket3_hdr, followed at
// TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) by its struct sockaddr_ll,
// whose sll_pkttype is at byte 10.
const (
	blockStatusOff = 8
	blockPktsOff   = 12
	blockFirstOff  = 16
	pktAddrOff     = (unix.SizeofTpacket3Hdr + unix.TPACKET_ALIGNMENT - 1) &^ (unix.TPACKET_ALIGNMENT - 1)
	sllPkttypeOff  = 10
	// ringBlockSize is a block's size unless a frame of bufSize bytes
	// needs a larger one: 128 KiB holds ~700 64-byte frames, several
	// hundred microseconds of a busy mirror, and is an allocation the
	// kernel usually finds contiguous (it falls back to vmalloc).
	ringBlockSize = 128 << 10
	// minRingBlocks: with fewer the kernel would stop (and drop) while
	// the reader holds a block or two.
	minRingBlocks = 4
	// defaultRingBytes is the ring's size when the caller leaves the
	// receive buffer to the kernel's default (rcvbuf 0), as libpcap's
	// default buffer.
	defaultRingBytes = 2 << 20
)

// ringLayout returns the block size and count of a ring that holds
// rcvbuf bytes (defaultRingBytes if 0) and packets of up to bufSize bytes
// each, with the tpacket header before them.
func ringLayout(bufSize, rcvbuf int) (blockSize, blocks int) {
	need := unix.TPACKET_ALIGNMENT*4 + pktAddrOff + unix.SizeofSockaddrLinklayer + 2*unix.TPACKET_ALIGNMENT + bufSize
	blockSize = ringBlockSize
	for blockSize < need {
		blockSize *= 2
	}
	if rcvbuf == 0 {
		rcvbuf = defaultRingBytes
	}
	blocks = max((rcvbuf+blockSize-1)/blockSize, minRingBlocks)
	return blockSize, blocks
}

// setupRing makes fd's receive path a TPACKET_V3 ring of the given layout
// and maps it; blocks are retired to the reader after at most moderate,
// rounded up to whole milliseconds (the kernel's unit), at least 1 ms.
func setupRing(fd, blockSize, blocks int, moderate time.Duration) ([]byte, error) {
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return nil, fmt.Errorf("TPACKET_V3: %w", err)
	}
	req := unix.TpacketReq3{
		Block_size: uint32(blockSize), Block_nr: uint32(blocks),
		// A V3 ring packs packets of any size into its blocks; the
		// kernel still wants a frame size that divides them.
		Frame_size: uint32(blockSize), Frame_nr: uint32(blocks),
		Retire_blk_tov: retireTimeout(moderate),
	}
	if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return nil, fmt.Errorf("receive ring of %d blocks of %d bytes: %w", blocks, blockSize, err)
	}
	// The kernel maps every page of the ring at once (packet_mmap): no
	// MAP_POPULATE needed, no page fault on the receive path.
	p, err := unix.MmapPtr(fd, 0, nil, uintptr(blockSize*blocks), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the receive ring (%d bytes): %w", blockSize*blocks, err)
	}
	return unsafe.Slice((*byte)(p), blockSize*blocks), nil
}

// retireTimeout is the ring's block retire timeout for the moderation
// delay moderate: in whole milliseconds, rounded up, at least 1 (0 would
// have the kernel choose from the link's speed: 8 ms on veth).
func retireTimeout(moderate time.Duration) uint32 {
	return max(uint32((moderate+time.Millisecond-1)/time.Millisecond), 1)
}

// newRing takes over fd, whose ring of the given layout is mapped at mem.
// On error fd and mem are left to the caller.
func newRing(fd int, mem []byte, blockSize, blocks int) (*ring, error) {
	r := &ring{mapped: mapped{mem: mem}, blockSize: blockSize, blocks: blocks}
	if err := r.init(fd); err != nil {
		return nil, err
	}
	r.cleanup = runtime.AddCleanup(r, unmapMem, mem)
	return r, nil
}

func (r *ring) status(block int) *uint32 {
	return (*uint32)(unsafe.Pointer(&r.mem[block*r.blockSize+blockStatusOff]))
}

// read waits until the kernel has handed a block to the reader and
// returns up to len(out) of its packets in out, which stay valid until
// the next read (close leaves a lent batch mapped). It gives a block back to the kernel at the
// read after the one that returned its last packet. After close it
// returns net.ErrClosed. It does not allocate. Only one goroutine may
// call it at a time.
func (r *ring) read(out []ringFrame) (int, error) {
	return r.mapped.read(func() (int, error) { return r.fill(out) })
}

// fill is read's work (the block hand-back, the wait, the batch), with
// fdmu held shared.
func (r *ring) fill(out []ringFrame) (int, error) {
	for {
		if r.closed.Load() {
			return 0, net.ErrClosed
		}
		if r.open && r.left == 0 {
			// Every packet of cur was handed out by an earlier read,
			// and that batch is done with: the block goes back.
			atomic.StoreUint32(r.status(r.cur), unix.TP_STATUS_KERNEL)
			r.open = false
			r.cur = (r.cur + 1) % r.blocks
		}
		if !r.open {
			if atomic.LoadUint32(r.status(r.cur))&unix.TP_STATUS_USER == 0 {
				// The kernel is still filling it: wait for the block
				// (poll is readable once one is the reader's) or for
				// close.
				if err := r.wait(); err != nil {
					return 0, err
				}
				continue
			}
			base := r.cur * r.blockSize
			r.open = true
			r.left = *(*uint32)(unsafe.Pointer(&r.mem[base+blockPktsOff]))
			r.next = base + int(*(*uint32)(unsafe.Pointer(&r.mem[base+blockFirstOff])))
			continue // a block of no packets goes back at once
		}
		n := 0
		for n < len(out) && r.left > 0 {
			h := (*unix.Tpacket3Hdr)(unsafe.Pointer(&r.mem[r.next]))
			mac := r.next + int(h.Mac)
			out[n] = ringFrame{
				data:      r.mem[mac : mac+int(h.Snaplen)],
				truncated: h.Snaplen < h.Len,
				pkttype:   r.mem[r.next+pktAddrOff+sllPkttypeOff],
			}
			r.next += int(h.Next_offset)
			r.left--
			n++
		}
		return n, nil
	}
}
