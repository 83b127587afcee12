package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// Message is one GRE packet as a GRESocket read it.
type Message struct {
	// Src is the outer source address (the switch: the tunnel's remote
	// end), Dst the outer destination (our local address). IPv6 zones are
	// not reported.
	Src, Dst netip.Addr
	// GRE is the GRE header and everything after it. It aliases the
	// socket's buffer: valid until the next ReadBatch.
	GRE []byte
	// Err is non-nil, an erspan.Error, when the packet could not be taken
	// apart: erspan.ErrShort when it did not fit the buffer,
	// erspan.ErrIPHeader when the outer header is malformed. GRE is then
	// nil; Src and Dst are set when they could be read.
	Err error
}

// GRESocket receives the ERSPAN packets (GRE protocol 0x88BE and 0x22EB)
// that reach its network namespace over one address family, in batches
// read with recvmmsg: the receive socket where the kernel refuses an eBPF
// ring (greRing), or where none is asked for (listenGRE). It never sends:
// transmit uses sockets of its own (design.md, Data path).
//
// ReadBatch must not be called concurrently with itself; KernelDrops and
// Close may be called from any goroutine.
type GRESocket struct {
	c *batchConn
	// ringErr says why the socket reads with recvmmsg rather than a ring
	// asked for (nil: none was).
	ringErr error
	family  int
	guards  guards // the guard socket (see listenGRE)
	drops   atomic.Uint64
	// lastDrops is the latest SO_RXQ_OVFL seen, by ReadBatch only.
	lastDrops uint64
	names     []unix.RawSockaddrInet6 // IPv6 only: the source address
	msgs      []Message
}

// Per-message control buffer sizes. Every packet may carry SO_RXQ_OVFL (a
// uint32, present once the socket has dropped anything); IPv6 adds
// IPV6_PKTINFO (struct in6_pktinfo) for the destination address.
var (
	oobSize4 = unix.CmsgSpace(4)
	oobSize6 = unix.CmsgSpace(4) + unix.CmsgSpace(unix.SizeofInet6Pktinfo)
)

// MaxBatch is the kernel's limit on one recvmmsg (UIO_MAXIOV): it would
// silently read fewer.
const MaxBatch = 1024

// listenGRE opens a raw IPPROTO_GRE socket of family 4 or 6 in the calling
// thread's network namespace, which receives up to batch packets of up to
// bufSize bytes (the IPv4 header included) per ReadBatch, with a receive
// buffer of rcvbuf bytes (SO_RCVBUFFORCE, or SO_RCVBUF capped by
// net.core.rmem_max without CAP_NET_ADMIN; 0 keeps the default; with a
// ring, the ring's size: greRingSize), and the
// interrupt moderation delay moderate (see batchConn).
//
// While it is open the kernel no longer answers GRE packets with ICMP
// protocol unreachable, also those the socket's filter rejects (the
// kernel counts a packet as delivered once a raw socket of its protocol
// takes it or filters it out). Not so for packets dropped because the
// receive buffer is full: Linux 6.10 and later answer those with protocol
// unreachable (seen on 6.18), hence a large rcvbuf, and a guard: a second
// raw GRE socket of the family whose filter drops everything, which the
// caller keeps open beside this one (design.md, Data path: ICMP) and
// hands to the socket's guards, which its first Close releases.
//
// With ring, the socket is a greRing, receiving into an eBPF ring, if the
// kernel allows it; otherwise, and without ring, a GRESocket reading with
// recvmmsg (whose RingError says why the ring was refused). A ring needs
// no guard: its socket queues nothing, so its buffer never overflows.
func listenGRE(family int, batch int, bufSize int, rcvbuf int, moderate time.Duration, ring bool) (Socket, error) {
	if family != 4 && family != 6 {
		return nil, fmt.Errorf("GRE socket: address family %d: %w", family, unix.EAFNOSUPPORT)
	}
	if err := checkBatchArgs(batch, bufSize, rcvbuf); err != nil {
		return nil, fmt.Errorf("GRE socket: %w", err)
	}
	var ringErr error
	if ring {
		r, err := openRing(family, batch, bufSize, rcvbuf, moderate)
		if err == nil {
			return r, nil
		}
		ringErr = err
	}
	s, err := listenRecvmmsg(family, batch, bufSize, rcvbuf, moderate)
	if err != nil {
		return nil, err
	}
	s.ringErr = ringErr
	return s, nil
}

// listenRecvmmsg opens the GRESocket of listenGRE.
func listenRecvmmsg(family int, batch int, bufSize int, rcvbuf int, moderate time.Duration) (*GRESocket, error) {
	af, oobSize := unix.AF_INET, oobSize4
	if family == 6 {
		af, oobSize = unix.AF_INET6, oobSize6
	}
	filter, err := ersFilter(family)
	if err != nil {
		return nil, err
	}
	// What the socket queued before the filter took over goes
	// (openRawGRE), so that ReadBatch only ever returns packets that
	// passed the filter. (ERSPAN packets arriving before the drain go
	// too: the socket is new, no interface reads it yet.) The queue is
	// bounded by the default receive buffer, which is why this comes
	// before the buffer is enlarged.
	fd, err := openRawGRE(af, func(fd int) error {
		if err := attachFilter(fd, filter); err != nil {
			return fmt.Errorf("attach the ERSPAN filter: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("IPv%d: %w", family, err)
	}
	if err := setupGRE(fd, family, rcvbuf); err != nil {
		unix.Close(fd)
		return nil, err
	}

	s := &GRESocket{family: family, msgs: make([]Message, batch)}
	if family == 6 {
		s.names = make([]unix.RawSockaddrInet6, batch)
	}
	if s.c, err = newBatchConn(fd, batch, bufSize, oobSize, s.names, moderate); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("raw GRE socket (IPv%d): %w", family, err)
	}
	return s, nil
}

func setupGRE(fd, family, rcvbuf int) error {
	if err := setRcvBuf(fd, rcvbuf); err != nil {
		return fmt.Errorf("GRE socket (IPv%d): %w", family, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1); err != nil {
		return fmt.Errorf("GRE socket (IPv%d): SO_RXQ_OVFL: %w", family, err)
	}
	if family == 6 {
		// A raw IPv6 socket returns the payload without the IPv6 header:
		// the source comes with the sockaddr, the destination only in
		// this control message.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
			return fmt.Errorf("GRE socket (IPv6): IPV6_RECVPKTINFO: %w", err)
		}
	}
	return nil
}

// ersFilter returns the classic BPF program that passes GRE packets of
// protocol 0x88BE or 0x22EB whole and drops everything else, including GRE
// too short to have a protocol field.
//
// Where offset 0 is differs by family; verified on Linux 6.18 with filters
// testing one field each, over loopback and veth:
//   - AF_INET raw: offset 0 is the IPv4 header (version nibble 4 at [0]),
//     as recvmsg returns it; the GRE header starts after IHL*4 bytes,
//     which ldx msh (X = 4*([0]&0xf)) loads, IPv4 options included.
//   - AF_INET6 raw: offset 0 is the GRE header itself ([0:2] = the GRE
//     flags, and [0]>>4 == 6 never matches); the kernel has pulled the
//     IPv6 header before the socket filter runs, as it is absent from
//     recvmsg too.
func ersFilter(family int) ([]unix.SockFilter, error) {
	var prog []bpf.Instruction
	if family == 4 {
		prog = append(prog, bpf.LoadMemShift{Off: 0})          // X = IPv4 header length
		prog = append(prog, bpf.LoadIndirect{Off: 2, Size: 2}) // A = GRE protocol type
	} else {
		prog = append(prog, bpf.LoadAbsolute{Off: 2, Size: 2}) // A = GRE protocol type
	}
	prog = append(prog,
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: erspan.ProtoERSPAN, SkipTrue: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: erspan.ProtoERSPAN3, SkipTrue: 1},
		bpf.RetConstant{Val: 0},              // drop
		bpf.RetConstant{Val: math.MaxUint32}, // keep the whole packet
	)
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("assemble the ERSPAN socket filter: %w", err)
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// ReadBatch waits until at least one packet is there, then reads as many
// as are queued, up to the batch size, with one recvmmsg(2) (batchConn),
// blocking in the kernel, with interrupt moderation. It returns them in
// arrival order. The slice and every Message.GRE alias buffers of the
// socket that the next ReadBatch overwrites.
//
// ReadBatch allocates nothing (per call or per packet) once the socket is
// open. golang.org/x/net's ipv4/ipv6 PacketConn.ReadBatch was measured
// here at 2 allocations per message (a *net.IPAddr and its IP, for
// Message.Addr, 160 allocations for 80 packets), so this calls recvmmsg
// itself, on preallocated headers, iovecs, sockaddrs and control buffers.
//
// After Close it returns net.ErrClosed. Other errors wrap the errno.
func (s *GRESocket) ReadBatch() ([]Message, error) {
	n, err := s.c.read()
	if err != nil {
		return nil, readError(err, "GRE socket (IPv%d)", s.family)
	}
	drops := s.lastDrops
	for i := 0; i < n; i++ {
		s.parse(i)
	}
	if s.lastDrops != drops {
		s.drops.Store(s.lastDrops) // once per batch, for KernelDrops
	}
	return s.msgs[:n], nil
}

// readError is a receive socket's read error as ReadBatch returns it:
// net.ErrClosed as it is (the receivers stop on it), anything else named
// after the socket, format and a.
func readError(err error, format string, a ...any) error {
	if err == net.ErrClosed {
		return err
	}
	return fmt.Errorf(format+": %w", append(a, err)...)
}

// parse fills s.msgs[i] from the i-th received message.
func (s *GRESocket) parse(i int) {
	m := &s.msgs[i]
	*m = Message{}
	h := &s.c.hdrs[i]
	oob := s.c.oobOf(i)
	var dst [16]byte
	hasDst := false
	// Control messages, read by hand (unix.ParseSocketControlMessage
	// allocates): struct cmsghdr is a 64-bit length, a 32-bit level and
	// a 32-bit type, then the data, each message padded to 8 bytes.
	for len(oob) >= unix.SizeofCmsghdr {
		l := int(binary.NativeEndian.Uint64(oob[0:8]))
		level := int32(binary.NativeEndian.Uint32(oob[8:12]))
		typ := int32(binary.NativeEndian.Uint32(oob[12:16]))
		if l < unix.SizeofCmsghdr || l > len(oob) {
			break
		}
		data := oob[unix.SizeofCmsghdr:l]
		switch {
		case level == unix.SOL_SOCKET && typ == unix.SO_RXQ_OVFL && len(data) >= 4:
			// The socket's cumulative drop count when this packet was
			// queued (sk_drops); the kernel adds it only once non-zero.
			s.lastDrops = uint64(binary.NativeEndian.Uint32(data))
		case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			copy(dst[:], data[:16])
			hasDst = true
		}
		adv := unix.CmsgSpace(l - unix.SizeofCmsghdr)
		if adv > len(oob) {
			break
		}
		oob = oob[adv:]
	}

	b := s.c.buf(i)
	truncated := h.Hdr.Flags&unix.MSG_TRUNC != 0
	if s.family == 4 {
		parseIPv4Packet(m, b, truncated)
		return
	}
	if h.Hdr.Namelen >= unix.SizeofSockaddrInet6 {
		m.Src = netip.AddrFrom16(s.names[i].Addr)
	}
	if hasDst {
		m.Dst = netip.AddrFrom16(dst)
	}
	parseIPv6Payload(m, b, truncated)
}

// parseIPv4Packet fills m from b, an IPv4 packet as a raw socket receives
// it, which is only its start when truncated.
func parseIPv4Packet(m *Message, b []byte, truncated bool) {
	if truncated {
		if len(b) >= 20 {
			// The header is whole even though the payload is not.
			m.Src = netip.AddrFrom4([4]byte(b[12:16]))
			m.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		}
		m.Err = erspan.ErrShort
		return
	}
	// The kernel hands a raw IPv4 socket the header as received, options
	// included, with tot_len in network order. ParseIPv4 returns no
	// payload with an error.
	m.Src, m.Dst, m.GRE, m.Err = erspan.ParseIPv4(b)
}

// parseIPv6Payload completes m, whose addresses are set if they were
// known, with b, the GRE packet a raw IPv6 socket receives, which is only
// its start when truncated.
func parseIPv6Payload(m *Message, b []byte, truncated bool) {
	switch {
	case truncated:
		m.Err = erspan.ErrShort
	case !m.Src.IsValid() || !m.Dst.IsValid():
		m.Err = erspan.ErrIPHeader
	default:
		m.GRE = b
	}
}

// KernelDrops returns the number of packets the kernel dropped because the
// socket's receive buffer was full, cumulative since the socket opened, as
// of the latest batch read (SO_RXQ_OVFL, published once per batch).
func (s *GRESocket) KernelDrops() uint64 { return s.drops.Load() }

// RingError says why a socket asked to receive into an eBPF ring reads
// with recvmmsg instead; nil if it was not asked.
func (s *GRESocket) RingError() error { return s.ringErr }

// Close closes the socket and makes a pending ReadBatch return
// net.ErrClosed. Closing twice returns net.ErrClosed.
func (s *GRESocket) Close() error {
	return s.guards.closeWith(func() error { return s.c.close(nil) })
}

// guards give back the guard sockets a receive socket holds (each one's
// release function), once, at its first close.
type guards []func()

// closeWith runs closeFn and gives the guards back unless the socket was
// closed before: the first close, even one close(2) reported an error
// for, ends the socket either way, and so must the guards' references.
func (g *guards) closeWith(closeFn func() error) error {
	err := closeFn()
	if !errors.Is(err, net.ErrClosed) {
		g.release()
	}
	return err
}

func (g *guards) release() {
	for _, r := range *g {
		r()
	}
	*g = nil
}

// openRing is openGRERing but where a test makes the kernel refuse it.
var openRing = openGRERing

// guardSockets is off only in the test that shows why guards exist
// (TestNoICMPOnOverflow).
var guardSockets = true

// dropAll is a classic BPF program that accepts nothing.
var dropAll = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}

// openRawGRE opens a raw IPPROTO_GRE socket of address family af, has
// attach give it its filter, and drops what it queued before the filter
// took over: a raw GRE socket receives every GRE packet of its namespace
// from its creation on, and what it queued then would otherwise be read
// (recvmmsg) or, on a socket never read (a ring's, a send socket), hold
// its buffer until it closes.
func openRawGRE(af int, attach func(fd int) error) (int, error) {
	fd, err := unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, erspan.IPProtoGRE)
	if errors.Is(err, unix.EPERM) {
		return -1, fmt.Errorf("raw GRE socket: %w (raw sockets need CAP_NET_RAW)", err)
	}
	if err != nil {
		return -1, fmt.Errorf("raw GRE socket: %w", err)
	}
	if err := attach(fd); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("raw GRE socket: %w", err)
	}
	drainAfterAttach(fd)
	return fd, nil
}

// membarrierCmdGlobal is MEMBARRIER_CMD_GLOBAL (linux/membarrier.h),
// which golang.org/x/sys does not name.
const membarrierCmdGlobal = 1

// quiesceFallback stands in for gracePeriod's wait where the kernel
// refuses membarrier: much longer than any delivery of a packet to a
// socket.
const quiesceFallback = 20 * time.Millisecond

// gracePeriod returns once every RCU read-side section in progress when it
// was called has ended (see drainAfterAttach). A variable for the tests.
var gracePeriod = func() {
	if membarrierGlobal() != nil {
		time.Sleep(quiesceFallback)
	}
}

// membarrierGlobal is membarrier(MEMBARRIER_CMD_GLOBAL): synchronize_rcu().
func membarrierGlobal() error {
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno != 0 {
		return errno
	}
	return nil
}

// drainAfterAttach drops what raw socket fd queued before the filter just
// attached to it took over, once the packets the kernel was then
// delivering to it have all been queued or dropped.
//
// A drain at once is not enough: the kernel reads a socket's filter and
// queues what it passes within one RCU read-side section (raw_v4_input
// and raw6_local_deliver hold rcu_read_lock; the receive softirq runs
// with bottom halves off), so a packet that read no filter, before the
// attach, can be queued just after it, and on a ring's socket it would
// then stay queued for ever (a loaded run of all tests saw it in one of
// 20 rings opened under a flood). membarrier(MEMBARRIER_CMD_GLOBAL) is
// synchronize_rcu(): when it returns, every such section has ended. It
// takes a grace period, ~10 ms here, once per socket opened. Where it is
// refused (EINVAL with nohz_full, ENOSYS under a seccomp filter), a sleep
// stands in.
func drainAfterAttach(fd int) {
	gracePeriod()
	drainSocket(fd)
}

// drainSocket drops what socket fd has queued. The count bounds the loop.
func drainSocket(fd int) {
	var scratch [1]byte
	for range 1 << 16 {
		if _, _, err := unix.Recvfrom(fd, scratch[:], unix.MSG_DONTWAIT|unix.MSG_TRUNC); err != nil {
			break
		}
	}
}

// attachDropAll makes a raw socket receive nothing: the kernel drops what
// would be queued to it at once.
func attachDropAll(fd int) error {
	if err := attachFilter(fd, dropAll); err != nil {
		return fmt.Errorf("attach a drop-all filter: %w", err)
	}
	return nil
}

// attachFilter attaches the classic BPF program prog to socket fd.
func attachFilter(fd int, prog []unix.SockFilter) error {
	fp := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fp)
}

// setRcvBuf sets socket fd's receive buffer to n bytes; 0 keeps the
// default. SO_RCVBUFFORCE ignores net.core.rmem_max but needs
// CAP_NET_ADMIN; without it SO_RCVBUF gets what rmem_max allows.
func setRcvBuf(fd, n int) error {
	return setBuf(fd, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, n, "receive")
}

// setBuf sets a socket buffer to n bytes beyond the sysctl maximum (the
// FORCE option, root) or else up to it; 0 keeps the default.
func setBuf(fd, force, opt, n int, what string) error {
	if n == 0 {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, n); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, n); err != nil {
			return fmt.Errorf("%s buffer %d: %w", what, n, err)
		}
	}
	return nil
}
