package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// greRing is the receive socket (a Socket) where the kernel allows it
// (listenGRE; GRESocket, with recvmmsg, where not): the raw GRE socket's
// filter is an eBPF program that copies each ERSPAN packet into a BPF ring
// buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8) mapped into erspand, and queues
// nothing to the socket. ReadBatch must not be called concurrently with
// itself; KernelDrops and Close may be called from any goroutine.
//
// Why: read with recvmmsg, each packet cost erspand a dequeue under the
// queue's irq-safe lock, a copy, control messages and the free of its skb
// (perf, 64-byte frames: about a third of erspand's CPU per frame, as much
// as the TAP write beside it is allowed to leave in all). The filter runs
// where the socket's queueing ran, in the kernel's receive softirq, after
// the IP stack accepted the packet for local delivery: after the firewall's
// input hook, reassembly and the destination check, so the ring sees
// exactly what the socket would have received (not so a packet socket's
// ring, which sees frames before the IP stack). erspand then reads
// packets in place, with no system call while the ring has any.
//
// The kernel still counts a filtered packet as taken by a raw socket, so
// it sends no ICMP protocol unreachable for it; and the socket's queue,
// never used, cannot overflow into one (see listenGRE). A packet the ring
// has no room for is dropped and counted (KernelDrops). The ring is the
// receive buffer's size: it holds records of the packets' own size, where
// the socket's buffer (twice the size asked, counted in the kernel's
// whole allocation per packet) held a third more full-size frames and a
// third as many small ones. Unlike the socket's buffer, a limit, the ring
// is allocated and mapped when it opens: erspand's RSS counts it.
//
// A record is the 8 bytes recHead (the packet's length as received, a
// uint32 in host order, then 4 unused), for IPv6 the outer source and
// destination addresses (a raw IPv6 socket's packet starts at the GRE
// header), then the packet, cut at the socket's buffer size.
type greRing struct {
	mapped // fd: the ring's map; mem: consumer page, producer page, data

	sock int // the raw GRE socket whose filter fills the ring
	// dropsMap is an array of one uint64: the packets the ring had no
	// room for. One slot for every CPU: while the ring is full each
	// packet takes the ring's own lock anyway (bpf_ringbuf_output), a
	// line all CPUs share, so a slot per CPU would save little.
	dropsMap int
	family   int
	moderation

	page int
	size uint64 // of the data area, a power of two
	// pos is the consumer position of the next record; the kernel learns
	// it at the next read (the batch returned stays the reader's).
	pos   uint64
	given uint64 // the consumer position the kernel has
	wrap  []byte // a record that crosses the data area's end, made whole
	// lastDrops is the drop count last read (readDrops): the one read
	// at close, for KernelDrops after.
	lastDrops atomic.Uint64
	msgs      []Message // what ReadBatch returns
}

const (
	recHead        = 8
	recHeadIPv6    = recHead + 32
	ringBusyBit    = unix.BPF_RINGBUF_BUSY_BIT
	ringDiscardBit = unix.BPF_RINGBUF_DISCARD_BIT
	ringRecordHdr  = unix.BPF_RINGBUF_HDR_SZ
)

// greRingSize is the data area for a receive buffer of rcvbuf bytes (0:
// the kernel's default, taken as defaultRingBytes) and batches of batch
// packets of up to bufSize bytes: rcvbuf, but at least 1 MiB and twice a
// batch of the largest records (the batch lent to the reader keeps its
// records from the kernel until the next read: half the ring stays the
// kernel's), rounded up to a power of two as the kernel wants.
func greRingSize(rcvbuf, batch, bufSize int) uint64 {
	if rcvbuf == 0 {
		rcvbuf = defaultRingBytes
	}
	want := max(uint64(rcvbuf), 2*uint64(batch)*uint64(ringRecordHdr+recHeadIPv6+bufSize), 1<<20)
	size := uint64(1)
	for size < want {
		size <<= 1
	}
	return size
}

// openGRERing opens a raw GRE socket of family (4 or 6) in the calling
// thread's network namespace that receives into a new greRing. Its errors
// say which step failed and, for the kernel's usual refusals, why.
func openGRERing(family, batch, bufSize, rcvbuf int, moderate time.Duration) (r *greRing, err error) {
	af, head := unix.AF_INET, recHead
	if family == 6 {
		af, head = unix.AF_INET6, recHeadIPv6
	}
	size := greRingSize(rcvbuf, batch, bufSize)
	// The fds of the ring's maps and program, as they are made: kept
	// ones are closed if the ring fails; temporary ones in any case, as
	// the socket holds the program, and the program its maps.
	var kept, temp []int
	defer func() {
		closeFDs(temp)
		if err != nil {
			closeFDs(kept)
		}
	}()
	// made takes what bpf(2) made (into kept or temp); its refusal gets
	// ringHint's reason.
	made := func(into *[]int) func(int, error) (int, error) {
		return func(fd int, err error) (int, error) {
			if err != nil {
				return -1, ringHint(err, size)
			}
			*into = append(*into, fd)
			return fd, nil
		}
	}
	keep, temporary := made(&kept), made(&temp)
	ringFD, err := keep(createMap(unix.BPF_MAP_TYPE_RINGBUF, 0, 0, uint32(size), 0, "erspan_ring"))
	if errors.Is(err, unix.EINVAL) {
		return nil, fmt.Errorf("%w (BPF ring buffers need Linux 5.8 or later)", err)
	}
	if err != nil {
		return nil, err
	}
	// One scratch record per CPU: the program copies the packet there
	// first, as bpf_ringbuf_output wants the record's bytes in memory (a
	// reserved record has a constant size, that of the largest packet).
	// The kernel takes per-CPU values of up to 32 KiB: bufSize
	// (DefaultBufSize, 9344) is well under; a larger one is refused
	// (E2BIG), and the socket reads with recvmmsg.
	scratch, err := temporary(createMap(unix.BPF_MAP_TYPE_PERCPU_ARRAY, 4, uint32(head+bufSize+7)&^7, 1, 0, "erspan_scratch"))
	if err != nil {
		return nil, err
	}
	dropsMap, err := keep(createMap(unix.BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0, "erspan_drops"))
	if err != nil {
		return nil, err
	}
	prog, err := temporary(loadProgram(unix.BPF_PROG_TYPE_SOCKET_FILTER,
		greRingProgram(family, bufSize, scratch, ringFD, dropsMap), fmt.Sprintf("erspan_ring%d", family)))
	if err != nil {
		return nil, err
	}
	// The program queues nothing: what the socket holds once it is
	// attached came before and goes (openRawGRE). The ring fills
	// meanwhile.
	sock, err := openRawGRE(af, func(fd int) error {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_BPF, prog); err != nil {
			return fmt.Errorf("attach the eBPF ring program: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("IPv%d: %w", family, err)
	}
	kept = append(kept, sock)
	mem, err := mapGRERing(ringFD, size)
	if err != nil {
		return nil, err
	}
	r = &greRing{mapped: mapped{mem: mem}, sock: sock, dropsMap: dropsMap, family: family,
		moderation: moderation{moderate: moderate}, page: os.Getpagesize(), size: size,
		wrap: make([]byte, head+bufSize), msgs: make([]Message, batch)}
	if err := r.init(ringFD); err != nil {
		unmapMem(mem)
		return nil, err
	}
	r.cleanup = runtime.AddCleanup(r, unmapMem, mem)
	return r, nil
}

// ringHint adds to err, bpf(2)'s refusal of one of the ring's maps or of
// its program (size: the ring's bytes), what an EPERM there means. Only
// there: an EPERM of the socket is CAP_NET_RAW's (openRawGRE says so).
// (An older kernel's refusal of the ring map itself is explained where it
// is created.)
func ringHint(err error, size uint64) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%w (eBPF maps and programs need CAP_BPF or root, and before Linux 5.11 an RLIMIT_MEMLOCK over the ring's %d bytes)", err, size)
	}
	return err
}

// mapGRERing maps ring map fd of size data bytes as one piece of memory:
// the consumer page (the only one the kernel lets us write), the producer
// page, then the data area once. The kernel would map the data twice in a
// row, so that no record is cut at the end; that doubles the ring's share
// of erspand's RSS, and a record crossing the end is copied whole instead
// (at most one per batch).
func mapGRERing(fd int, size uint64) ([]byte, error) {
	page := uintptr(os.Getpagesize())
	total := 2*page + uintptr(size)
	base, err := unix.MmapPtr(-1, 0, nil, total, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("reserve %d bytes for the eBPF ring: %w", total, err)
	}
	if _, err = unix.MmapPtr(fd, 0, base, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED); err == nil {
		_, err = unix.MmapPtr(fd, int64(page), unsafe.Add(base, page), page+uintptr(size), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_FIXED)
	}
	if err != nil {
		_ = unix.MunmapPtr(base, total)
		return nil, fmt.Errorf("map the eBPF ring (%d bytes): %w", size, err)
	}
	return unsafe.Slice((*byte)(base), total), nil
}

// greRingProgram returns the socket filter of a family's ring: it passes
// what ersFilter passes (GRE of protocol 0x88BE or 0x22EB), as a record
// (greRing) through the per-CPU scratch map into the ring, counts in the
// drops map what the ring has no room for, and returns 0 for every packet:
// the socket queues nothing.
//
// Where the packet starts is as ersFilter says: a raw IPv4 socket's at the
// IPv4 header, a raw IPv6 socket's at the GRE header (the IPv6 header,
// whose addresses the record needs, is read relative to the network
// header). The legacy packet loads (BPF_LD|BPF_ABS/IND) read in network
// order and end the program, returning 0, should the packet be too short.
func greRingProgram(family, bufSize, scratch, ring, drops int) []bpfInsn {
	const (
		ldAbsB = unix.BPF_LD | unix.BPF_ABS | unix.BPF_B
		ldAbsH = unix.BPF_LD | unix.BPF_ABS | unix.BPF_H
		ldIndH = unix.BPF_LD | unix.BPF_IND | unix.BPF_H
		mov    = unix.BPF_ALU64 | unix.BPF_MOV | unix.BPF_X
		movK   = unix.BPF_ALU64 | unix.BPF_MOV | unix.BPF_K
		addK   = unix.BPF_ALU64 | unix.BPF_ADD | unix.BPF_K
		andK   = unix.BPF_ALU64 | unix.BPF_AND | unix.BPF_K
		lshK   = unix.BPF_ALU64 | unix.BPF_LSH | unix.BPF_K
		stW    = unix.BPF_ST | unix.BPF_MEM | unix.BPF_W
		stxW   = unix.BPF_STX | unix.BPF_MEM | unix.BPF_W
		ldxW   = unix.BPF_LDX | unix.BPF_MEM | unix.BPF_W
		xaddDW = unix.BPF_STX | unix.BPF_ATOMIC | unix.BPF_DW
		ldImm  = unix.BPF_LD | unix.BPF_IMM | unix.BPF_DW
		jeqK   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jneK   = unix.BPF_JMP | unix.BPF_JNE | unix.BPF_K
		jleK   = unix.BPF_JMP | unix.BPF_JLE | unix.BPF_K
		jltK   = unix.BPF_JMP | unix.BPF_JLT | unix.BPF_K
		call   = unix.BPF_JMP | unix.BPF_CALL
		exit   = unix.BPF_JMP | unix.BPF_EXIT

		fnLookup       = 1  // bpf_map_lookup_elem
		fnLoadBytes    = 26 // bpf_skb_load_bytes
		fnLoadBytesRel = 68 // bpf_skb_load_bytes_relative
		fnRingOutput   = 130
		hdrStartNet    = 1 // BPF_HDR_START_NET
		skbLen         = 0 // offsetof(struct __sk_buff, len)
	)
	mapFD := func(dst uint8, fd int) []bpfInsn {
		return []bpfInsn{insn(ldImm, dst, unix.BPF_PSEUDO_MAP_FD, 0, int32(fd)), {}}
	}
	head := int32(recHead)
	if family == 6 {
		head = recHeadIPv6
	}
	// Jumps to out are patched at the end: their offsets depend on what
	// follows.
	var p []bpfInsn
	var toOut []int
	jumpOut := func(code, dst uint8, imm int32) {
		toOut = append(toOut, len(p))
		p = append(p, insn(code, dst, 0, 0, imm))
	}
	p = append(p, insn(mov, 6, 1, 0, 0)) // r6 = the skb (the legacy loads want it there)
	if family == 4 {
		p = append(p,
			insn(ldAbsB, 0, 0, 0, 0), // r0 = version and IHL
			insn(andK, 0, 0, 0, 0xf),
			insn(lshK, 0, 0, 0, 2),
			insn(mov, 7, 0, 0, 0),    // r7 = the IPv4 header's length
			insn(ldIndH, 0, 7, 0, 2)) // r0 = GRE protocol type
	} else {
		p = append(p, insn(ldAbsH, 0, 0, 0, 2)) // r0 = GRE protocol type
	}
	p = append(p, insn(jeqK, 0, 0, 1, erspan.ProtoERSPAN))
	jumpOut(jneK, 0, erspan.ProtoERSPAN3)
	// r8 = this CPU's scratch record
	p = append(p, insn(stW, 10, 0, -4, 0))
	p = append(p, mapFD(1, scratch)...)
	p = append(p, insn(mov, 2, 10, 0, 0), insn(addK, 2, 0, 0, -4), insn(call, 0, 0, 0, fnLookup))
	jumpOut(jeqK, 0, 0)
	p = append(p,
		insn(mov, 8, 0, 0, 0),
		insn(ldxW, 9, 6, skbLen, 0), // r9 = the packet's length from where it starts
		insn(stxW, 8, 9, 0, 0),      // record: the length as received
		insn(stW, 8, 0, 4, 0),
		insn(jleK, 9, 0, 1, int32(bufSize)),
		insn(movK, 9, 0, 0, int32(bufSize))) // r9 = what is copied
	jumpOut(jltK, 9, 1)
	if family == 6 {
		// The IPv6 header's source and destination, bytes 8 to 40.
		p = append(p,
			insn(mov, 1, 6, 0, 0), insn(movK, 2, 0, 0, 8),
			insn(mov, 3, 8, 0, 0), insn(addK, 3, 0, 0, recHead),
			insn(movK, 4, 0, 0, 32), insn(movK, 5, 0, 0, hdrStartNet),
			insn(call, 0, 0, 0, fnLoadBytesRel))
		jumpOut(jneK, 0, 0)
	}
	p = append(p,
		insn(mov, 1, 6, 0, 0), insn(movK, 2, 0, 0, 0),
		insn(mov, 3, 8, 0, 0), insn(addK, 3, 0, 0, head),
		insn(mov, 4, 9, 0, 0),
		insn(call, 0, 0, 0, fnLoadBytes))
	jumpOut(jneK, 0, 0)
	p = append(p, mapFD(1, ring)...)
	p = append(p,
		insn(mov, 2, 8, 0, 0),
		insn(mov, 3, 9, 0, 0), insn(addK, 3, 0, 0, head),
		insn(movK, 4, 0, 0, 0), // flags 0: the kernel wakes a reader that has caught up
		insn(call, 0, 0, 0, fnRingOutput))
	jumpOut(jeqK, 0, 0)
	// No room: count it (an atomic add: the softirqs of every CPU run
	// the program).
	p = append(p, insn(stW, 10, 0, -4, 0))
	p = append(p, mapFD(1, drops)...)
	p = append(p, insn(mov, 2, 10, 0, 0), insn(addK, 2, 0, 0, -4), insn(call, 0, 0, 0, fnLookup))
	jumpOut(jeqK, 0, 0)
	p = append(p, insn(movK, 1, 0, 0, 1), insn(xaddDW, 0, 1, 0, unix.BPF_ADD))
	out := len(p)
	p = append(p, insn(movK, 0, 0, 0, 0), insn(exit, 0, 0, 0, 0)) // out: queue nothing
	for _, i := range toOut {
		p[i].off = int16(out - i - 1)
	}
	return p
}

// ReadBatch waits until the ring holds a record, then returns up to the
// batch size of packets, in arrival order, read in place (read). The
// slice and every Message.GRE alias the ring, which the next ReadBatch
// gives back to the kernel. It allocates nothing. After Close it returns
// net.ErrClosed; other errors wrap the errno.
func (r *greRing) ReadBatch() ([]Message, error) {
	n, err := r.read(r.msgs)
	if err != nil {
		return nil, readError(err, "GRE socket (IPv%d)", r.family)
	}
	return r.msgs[:n], nil
}

// KernelDrops returns the number of packets the ring had no room for,
// cumulative since it opened, as of now (or of Close).
func (r *greRing) KernelDrops() uint64 {
	r.control(func(int) { r.readDrops() })
	return r.lastDrops.Load()
}

// readDrops keeps the count in the drops map in lastDrops. A failed
// lookup keeps the last count read. The count never goes back because
// its callers are serialised (the Host's lock around KernelDrops, and
// close, with the ring closed to every other use): two at once could
// store the older of their reads last.
func (r *greRing) readDrops() {
	if v, err := lookupUint64(r.dropsMap, 0); err == nil {
		r.lastDrops.Store(v)
	}
}

// Close stops the ring's filling and closes it (close), making a pending
// ReadBatch return net.ErrClosed. Closing twice returns net.ErrClosed.
func (r *greRing) Close() error { return r.close() }

// read waits until the ring holds a record and returns up to len(msgs)
// packets, in arrival order, in msgs; their GRE slices point into the
// ring (or into wrap) and stay valid until the next read, which gives
// their space back to the kernel. After close it returns net.ErrClosed.
// It does not allocate. Only one goroutine may call it at a time.
func (r *greRing) read(msgs []Message) (int, error) {
	return r.mapped.read(func() (int, error) { return r.fill(msgs) })
}

func (r *greRing) fill(msgs []Message) (int, error) {
	for {
		if r.closed.Load() {
			return 0, net.ErrClosed // mem may be gone
		}
		consumer := (*uint64)(unsafe.Pointer(&r.mem[0]))
		producer := (*uint64)(unsafe.Pointer(&r.mem[r.page]))
		data := r.mem[2*r.page:]
		// The last batch is done with: its records go back. Before the
		// wait below, so that the kernel, seeing the reader caught up,
		// wakes it for the next record.
		if r.given != r.pos {
			atomic.StoreUint64(consumer, r.pos)
			r.given = r.pos
		}
		r.pause()
		prod := atomic.LoadUint64(producer)
		n := 0
		for r.pos < prod && n < len(msgs) {
			off := r.pos & (r.size - 1)
			hdr := atomic.LoadUint32((*uint32)(unsafe.Pointer(&data[off])))
			if hdr&ringBusyBit != 0 {
				break // reserved, still being written
			}
			l := uint64(hdr &^ (ringBusyBit | ringDiscardBit))
			if hdr&ringDiscardBit == 0 {
				start := off + ringRecordHdr
				var rec []byte
				if start+l <= r.size {
					rec = data[start : start+l]
				} else {
					k := copy(r.wrap, data[start:])
					copy(r.wrap[k:], data[:start+l-r.size])
					rec = r.wrap[:l]
				}
				r.parse(&msgs[n], rec)
				n++
			}
			r.pos += (l + ringRecordHdr + 7) &^ 7
		}
		switch {
		case n > 0:
			r.drained = n < len(msgs)
			return n, nil
		case r.pos < prod:
			// The next record is still being written (discarded
			// ones were skipped above): look again shortly.
			r.drained = true
		default:
			r.drained = false
			if err := r.wait(); err != nil {
				return 0, err
			}
		}
	}
}

// parse fills m from record rec (see greRing).
func (r *greRing) parse(m *Message, rec []byte) {
	*m = Message{}
	length := binary.NativeEndian.Uint32(rec[0:4])
	if r.family == 4 {
		b := rec[recHead:]
		parseIPv4Packet(m, b, int(length) > len(b))
		return
	}
	m.Src = netip.AddrFrom16([16]byte(rec[recHead : recHead+16]))
	m.Dst = netip.AddrFrom16([16]byte(rec[recHead+16 : recHead+32]))
	b := rec[recHeadIPv6:]
	parseIPv6Payload(m, b, int(length) > len(b))
}

// close stops the ring's filling (the socket goes, and with it the
// program), then keeps the drop count and closes the ring (mapped.close).
// A receive softirq that found the socket before it went may still be
// running the program and count a drop after the count was kept: at most
// one packet per CPU, not worth an RCU grace period (~10 ms, under the
// locks of the ring and of the Host that stops its receiver).
func (r *greRing) close() error {
	return r.mapped.close(func() {
		unix.Close(r.sock)
		r.readDrops()
		unix.Close(r.dropsMap)
	})
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
