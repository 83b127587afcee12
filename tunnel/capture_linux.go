package tunnel

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// CaptureSocket receives the ERSPAN packets seen on a network interface,
// addressed to this host or not: sensor mode (tunneldev). A raw IP socket
// never sees packets for other hosts, which the kernel drops before IP; an
// AF_PACKET socket does. The socket puts the interface in promiscuous mode
// through PACKET_ADD_MEMBERSHIP, which the kernel counts per user and
// undoes when the socket closes, so the interface's own setting comes back
// when the last erspanN lets go of it, whatever happens to erspand.
//
// Outer IP fragments cannot be reassembled here (the kernel reassembles
// only for the IP stack): they are passed up and counted as
// erspan.ErrFragment, never delivered.
//
// The socket reads a TPACKET_V3 ring (ring), not recvmmsg.
type CaptureSocket struct {
	r       *ring
	dev     string
	ifindex int
	guards  guards
	drops   atomic.Uint64
	frames  []ringFrame
	msgs    []Message
}

// captureFilter passes what sensor mode needs from an Ethernet interface:
// IPv4 or IPv6 (behind up to two 802.1Q/802.1ad tags the kernel left in the
// frame) carrying GRE whose protocol is ERSPAN (0x88BE, 0x22EB), and IPv4
// GRE fragments and IPv6 fragments, to be counted. X holds the length of
// the tags, so one copy of the IP checks serves every case.
var captureFilter = []unix.SockFilter{
	/* 0 */ {Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 12},
	/* 1 */ {Code: unix.BPF_LDX | unix.BPF_W | unix.BPF_IMM, K: 0},
	/* 2 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0x8100, Jt: 1},
	/* 3 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0x88a8, Jf: 8},
	// one tag: the next type at 16
	/* 4 */ {Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 16},
	/* 5 */ {Code: unix.BPF_LDX | unix.BPF_W | unix.BPF_IMM, K: 4},
	/* 6 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0x8100, Jt: 1},
	/* 7 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0x88a8, Jf: 4},
	// two tags: the next type at 20
	/* 8 */ {Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 20},
	/* 9 */ {Code: unix.BPF_LDX | unix.BPF_W | unix.BPF_IMM, K: 8},
	/* 10 */ {Code: unix.BPF_JMP | unix.BPF_JA, K: 1},
	/* 11 */ {Code: unix.BPF_JMP | unix.BPF_JA, K: 0}, // never reached; keeps 12 where the jumps above expect it
	// 12: A = IP ethertype, X = tag bytes
	/* 12 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0x0800, Jf: 12},
	// IPv4
	/* 13 */ {Code: unix.BPF_LD | unix.BPF_B | unix.BPF_IND, K: 14 + 9},
	/* 14 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: erspan.IPProtoGRE, Jf: 19},
	/* 15 */ {Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: 14 + 6},
	/* 16 */ {Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, K: 0x3fff, Jt: 16}, // MF or offset: a fragment
	/* 17 */ {Code: unix.BPF_LD | unix.BPF_B | unix.BPF_IND, K: 14},
	/* 18 */ {Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 0x0f},
	/* 19 */ {Code: unix.BPF_ALU | unix.BPF_LSH | unix.BPF_K, K: 2},
	/* 20 */ {Code: unix.BPF_ALU | unix.BPF_ADD | unix.BPF_X},
	/* 21 */ {Code: unix.BPF_MISC | unix.BPF_TAX},
	/* 22 */ {Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: 14 + 2},
	/* 23 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: erspan.ProtoERSPAN, Jt: 9},
	/* 24 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: erspan.ProtoERSPAN3, Jt: 8, Jf: 9},
	// IPv6 (no extension headers but a fragment header)
	/* 25 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0x86dd, Jf: 8},
	/* 26 */ {Code: unix.BPF_LD | unix.BPF_B | unix.BPF_IND, K: 14 + 6},
	/* 27 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 44, Jt: 5}, // fragment header
	/* 28 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: erspan.IPProtoGRE, Jf: 5},
	/* 29 */ {Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: 14 + 40 + 2},
	/* 30 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: erspan.ProtoERSPAN, Jt: 2},
	/* 31 */ {Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: erspan.ProtoERSPAN3, Jt: 1},
	/* 32 */ {Code: unix.BPF_RET | unix.BPF_K, K: 0},
	/* 33 */ {Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
	/* 34 */ {Code: unix.BPF_RET | unix.BPF_K, K: 0},
}

// listenCapture opens a capture socket on interface dev in the calling
// thread's network namespace. The error wraps ENODEV when there is no such
// interface. A ReadBatch returns up to batch packets; the ring holds
// rcvbuf bytes (0: defaultRingBytes) and packets of at least bufSize
// bytes; moderate, rounded up to whole milliseconds, is the period of the
// kernel's timer that hands a partly filled block to the reader (ring).
// g are its guard sockets, which it holds until it closes
// (Linux.ListenCapture says why a capture needs them, and takes them
// before the capture opens).
func listenCapture(dev string, batch, bufSize, rcvbuf int, moderate time.Duration, g guards) (*CaptureSocket, error) {
	if err := checkBatchArgs(batch, bufSize, rcvbuf); err != nil {
		return nil, fmt.Errorf("capture on %s: %w", dev, err)
	}
	ifindex, err := deviceIndex(dev)
	if err != nil {
		return nil, err
	}
	// Protocol 0: nothing is received until bind, which comes after the
	// filter, so no unfiltered packet is ever queued.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	blockSize, blocks := ringLayout(bufSize, rcvbuf)
	mem, err := setupCapture(fd, ifindex, blockSize, blocks, moderate)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("capture on %s: %w", dev, err)
	}
	r, err := newRing(fd, mem, blockSize, blocks)
	if err != nil {
		unmapMem(mem)
		unix.Close(fd)
		return nil, fmt.Errorf("capture on %s: %w", dev, err)
	}
	return &CaptureSocket{r: r, dev: dev, ifindex: ifindex, guards: g,
		frames: make([]ringFrame, batch), msgs: make([]Message, batch)}, nil
}

// ignoreOutgoing: capture sockets ask the kernel to leave out what the
// host sends (PACKET_IGNORE_OUTGOING). Tests turn it off to check the skip
// in ReadBatch that kernels before 4.20 need.
var ignoreOutgoing = true

// deviceIndex returns the index of network interface dev in the calling
// thread's namespace; the error wraps ENODEV when there is none.
func deviceIndex(dev string) (int, error) {
	l, err := linkNamed(dev, unix.ENODEV)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}

// setupCapture filters fd, gives it its ring (setupRing) and binds it to
// ifindex in promiscuous mode. It returns the ring's memory; on error
// nothing is left mapped (a mapping holds the socket: closing fd would
// not release it, nor end its promiscuous membership).
func setupCapture(fd, ifindex, blockSize, blocks int, moderate time.Duration) ([]byte, error) {
	if err := attachFilter(fd, captureFilter); err != nil {
		return nil, fmt.Errorf("attach the ERSPAN filter: %w", err)
	}
	mem, err := setupRing(fd, blockSize, blocks, moderate)
	if err != nil {
		return nil, err
	}
	if err := bindCapture(fd, ifindex); err != nil {
		unmapMem(mem)
		return nil, err
	}
	return mem, nil
}

// bindCapture puts the interface in promiscuous mode for fd and binds fd
// to it.
func bindCapture(fd, ifindex int) error {
	// Frames this host sends are of no use to a sensor: with
	// PACKET_IGNORE_OUTGOING (Linux 4.20) the kernel does not hand them to
	// the socket at all; older kernels refuse the option, and ReadBatch
	// skips them instead.
	if ignoreOutgoing {
		_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	}
	mreq := unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		return fmt.Errorf("promiscuous mode: %w", err)
	}
	proto := uint16(unix.ETH_P_ALL)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto<<8 | proto>>8, Ifindex: ifindex}); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	return nil
}

// ReadBatch reads what arrived, as GRESocket.ReadBatch does; frames the
// host sent are skipped (kernels before 4.20 pass them up). It allocates
// nothing. The messages point into the ring: valid until the next
// ReadBatch, and only while the socket is reachable (ring).
func (s *CaptureSocket) ReadBatch() ([]Message, error) {
	for {
		n, err := s.r.read(s.frames)
		if err != nil {
			return nil, readError(err, "capture on %s", s.dev)
		}
		out := s.msgs[:0]
		for i := range s.frames[:n] {
			f := &s.frames[i]
			if f.pkttype == unix.PACKET_OUTGOING {
				continue
			}
			out = append(out, Message{})
			parseFrame(f.data, f.truncated, &out[len(out)-1])
		}
		if len(out) > 0 {
			return out, nil
		}
	}
}

// parseFrame takes the Ethernet, VLAN and IP headers off frame b into m;
// truncated: the frame did not fit the buffer. Unlike a raw IP socket's,
// these packets never went through the IP stack's input checks, so the
// IPv4 header checksum is verified here.
func parseFrame(b []byte, truncated bool, m *Message) {
	if truncated {
		m.Err = erspan.ErrShort
		return
	}
	off := 12
	et := uint16(0)
	for {
		if len(b) < off+2 {
			m.Err = erspan.ErrIPHeader
			return
		}
		et = binary.BigEndian.Uint16(b[off:])
		off += 2
		if et != 0x8100 && et != 0x88a8 {
			break
		}
		off += 2 // the tag's TCI
	}
	ip := b[off:]
	switch et {
	case 0x0800:
		if len(ip) >= 20 && binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 {
			m.Src, m.Dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
			m.Err = erspan.ErrFragment
			return
		}
		// A packet socket sees packets before the IP stack checks them.
		m.Src, m.Dst, m.GRE, m.Err = erspan.ParseIPv4Checked(ip)
	case 0x86dd:
		if len(ip) < 40 {
			m.Err = erspan.ErrIPHeader
			return
		}
		m.Src, m.Dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		if ip[6] == 44 {
			m.Err = erspan.ErrFragment
			return
		}
		plen := int(binary.BigEndian.Uint16(ip[4:6]))
		if 40+plen > len(ip) {
			m.Err = erspan.ErrShort
			return
		}
		m.GRE = ip[40 : 40+plen]
	default:
		m.Err = erspan.ErrIPHeader
	}
}

// KernelDrops is the number of frames the kernel dropped for this socket
// (PACKET_STATISTICS; reading it resets the kernel's count, so it is
// accumulated here).
func (s *CaptureSocket) KernelDrops() uint64 {
	s.r.control(s.addKernelDrops)
	return s.drops.Load()
}

// addKernelDrops adds the kernel's count since the last reading.
func (s *CaptureSocket) addKernelDrops(fd int) {
	if st, err := unix.GetsockoptTpacketStats(fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
		s.drops.Add(uint64(st.Drops))
	}
}

// Close closes the socket and ends its promiscuous membership. It takes
// the kernel's drop count last, so that KernelDrops after Close still has
// it (a closed socket has no statistics to read). While a batch is out
// the ring stays mapped, and a mapping keeps the socket alive (its close
// does not release it), so Close first stops it capturing: a filter that
// takes nothing, the membership dropped. Then its guards go.
func (s *CaptureSocket) Close() error {
	return s.guards.closeWith(func() error {
		return s.r.close(func() {
			fd := s.r.fd
			_ = attachDropAll(fd)
			mreq := unix.PacketMreq{Ifindex: int32(s.ifindex), Type: unix.PACKET_MR_PROMISC}
			_ = unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_DROP_MEMBERSHIP, &mreq)
			s.addKernelDrops(fd)
		})
	})
}
