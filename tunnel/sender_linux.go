package tunnel

import (
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SocketMark is the SO_MARK of every packet erspand sends. Span rules on a
// bridge skip packets with this mark, so that the ERSPAN packets of a span
// port whose tunnel runs through the same bridge are not mirrored again.
const SocketMark = 0x65727370 // "ersp"

// A raw GRE socket receives a clone of every GRE packet its address
// filter lets through, even one whose BPF program then drops it all. One
// connected socket per sending interface therefore cost one clone per
// received GRE packet per interface: with 1024 interfaces, decap fell to
// 1% of its rate (scripts/bench.sh). So sending interfaces share one
// unconnected socket per (namespace, family, df), which accepts nothing:
// each interface gives its destination per message (msg_name) and its
// source address, TTL and TOS as control messages. The kernel still writes
// the outer IP header and fragments (without df). The socket without df
// is also the guard of the namespace's receive socket (Linux.ListenGRE),
// so a collector that can send costs the kernel no third clone.

type sendKey struct {
	ns     string
	family int
	df     bool
}

// sendSocket is one shared send-only socket.
type sendSocket struct {
	f    *os.File
	rc   syscall.RawConn
	refs int // guarded by sendSockets.mu
}

// sendSockets holds the shared sockets of one System.
type sendSockets struct {
	mu sync.Mutex
	m  map[sendKey]*sendSocket
}

// get returns the shared socket for k, opening it (with open, in the right
// namespace) when it is the first user; release gives it back.
func (ss *sendSockets) get(k sendKey, open func() (*sendSocket, error)) (*sendSocket, func(), error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m == nil {
		ss.m = make(map[sendKey]*sendSocket)
	}
	s := ss.m[k]
	if s == nil {
		var err error
		if s, err = open(); err != nil {
			return nil, nil, err
		}
		ss.m[k] = s
	}
	s.refs++
	var once sync.Once
	release := func() {
		once.Do(func() {
			ss.mu.Lock()
			defer ss.mu.Unlock()
			if s.refs--; s.refs == 0 {
				delete(ss.m, k)
				s.f.Close()
			}
		})
	}
	return s, release, nil
}

// openSendSocket opens a shared send socket in the calling thread's
// network namespace, with a send buffer of sndbuf bytes (0: the default).
func openSendSocket(family int, df bool, sndbuf int) (*sendSocket, error) {
	if err := CheckSockBuf(sndbuf); err != nil {
		return nil, fmt.Errorf("send buffer %d: %w", sndbuf, err)
	}
	af := unix.AF_INET
	if family == 6 {
		af = unix.AF_INET6
	}
	// Blocking, so that os.NewFile keeps it out of Go's netpoller: there,
	// every sent packet freed by the device (sock_wfree) signalled write
	// space to epoll and woke a thread blocked in epoll_wait for nothing,
	// one wake-up per packet (~0.9 µs of 5.2 per encapsulated frame,
	// README, Performance). A raw socket does not wait for send buffer
	// space anyway (ENOBUFS, see SendBatch); should a send block for
	// another reason, sendTimeout bounds it. The descriptor is closed
	// only once a send in progress has returned (os.File's reference
	// count).
	// It only sends (design.md, Data path): the kernel drops what it
	// would queue to it at once.
	fd, err := openRawGRE(af, attachDropAll)
	if err != nil {
		return nil, err
	}
	if err := setupSendSocket(fd, family, df, sndbuf); err != nil {
		unix.Close(fd)
		return nil, err
	}
	s := &sendSocket{f: os.NewFile(uintptr(fd), "erspan-send")}
	if s.rc, err = s.f.SyscallConn(); err != nil {
		s.f.Close()
		return nil, err
	}
	return s, nil
}

func setupSendSocket(fd, family int, df bool, sndbuf int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, SocketMark); err != nil {
		return fmt.Errorf("SO_MARK: %w", err)
	}
	// Every sending interface of the namespace shares the socket, and so
	// its send buffer: the kernel refuses packets (ENOBUFS) once twice
	// the buffer is queued for the links. The default (212 kB, a few
	// hundred packets) would let one congested tunnel make all the others
	// drop.
	if err := setBuf(fd, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, sndbuf, "send"); err != nil {
		return err
	}
	tv := unix.NsecToTimeval(int64(sendTimeout))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return fmt.Errorf("SO_SNDTIMEO: %w", err)
	}
	// The tunnel's source address must be one of the namespace's own,
	// as for Linux's GRE tunnels: until it is, sends fail (counted in
	// tx_errors, logged). Sending from an address the host does not have
	// (IP_TRANSPARENT) would make a standby that lacks a failover
	// address mirror as well as the active node.
	if family == 4 {
		// DF set: the kernel refuses oversize packets with EMSGSIZE.
		// DF clear: it fragments them (OpenBSD's nodf default).
		pmtu := unix.IP_PMTUDISC_DONT
		if df {
			pmtu = unix.IP_PMTUDISC_DO
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, pmtu); err != nil {
			return fmt.Errorf("IP_MTU_DISCOVER: %w", err)
		}
		return nil
	}
	// IPv6 routers never fragment: without DF the source does, to the
	// outgoing link's MTU; with it, oversize packets are refused.
	pmtu, dontfrag := unix.IPV6_PMTUDISC_DONT, 0
	if df {
		pmtu, dontfrag = unix.IPV6_PMTUDISC_DO, 1
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, pmtu); err != nil {
		return fmt.Errorf("IPV6_MTU_DISCOVER: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_DONTFRAG, dontfrag); err != nil {
		return fmt.Errorf("IPV6_DONTFRAG: %w", err)
	}
	return nil
}

// sendTimeout bounds how long a send may block before the rest of its
// batch is dropped: the transmit loop, and a Destroy waiting for it, are
// never stuck longer. (A raw IP socket fails at once with ENOBUFS rather
// than wait for room in its send buffer; this is a bound for the rest.)
const sendTimeout = 100 * time.Millisecond

// senderBatch is how many packets one sendmmsg takes.
const senderBatch = 64

// rawSender is one interface's sending side on a shared socket: its
// destination, and per packet slot the control messages that carry its
// source address, TTL and the packet's TOS. Only one goroutine may use it
// at a time (the interface's transmit loop).
type rawSender struct {
	sock    *sendSocket
	release func()

	name   unix.RawSockaddrInet6 // the destination; large enough for IPv4
	oobLen int                   // control bytes per packet
	tosOff int                   // where the TOS value sits in them

	hdrs   []unix.Mmsghdr
	iovs   []unix.Iovec
	oobs   []byte
	bn     int // packets in the batch
	bsent  int // sent so far
	bErr   syscall.Errno
	batchF func(fd uintptr)
}

// cmsg appends a control message carrying data to b.
func cmsg(b []byte, level, typ int, data []byte) []byte {
	off := len(b)
	b = append(b, make([]byte, unix.CmsgSpace(len(data)))...)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[off]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[off+unix.CmsgLen(0):], data)
	return b
}

func intBytes(v int) []byte {
	b := make([]byte, 4)
	*(*int32)(unsafe.Pointer(&b[0])) = int32(v)
	return b
}

// newRawSender prepares the per-packet arguments of a tunnel from src to
// dst with hop limit ttl on socket s.
func newRawSender(s *sendSocket, release func(), src, dst netip.Addr, ttl int) *rawSender {
	r := &rawSender{sock: s, release: release}
	var oob []byte
	if src.Is4() {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&r.name))
		sa.Family = unix.AF_INET
		sa.Addr = dst.As4()
		// in_pktinfo: ipi_spec_dst is the source address a raw socket
		// uses for the packet.
		pi := unix.Inet4Pktinfo{Spec_dst: src.As4()}
		oob = cmsg(oob, unix.IPPROTO_IP, unix.IP_PKTINFO, (*[unix.SizeofInet4Pktinfo]byte)(unsafe.Pointer(&pi))[:])
		oob = cmsg(oob, unix.IPPROTO_IP, unix.IP_TTL, intBytes(ttl))
		r.tosOff = len(oob) + unix.CmsgLen(0)
		oob = cmsg(oob, unix.IPPROTO_IP, unix.IP_TOS, intBytes(0))
	} else {
		r.name.Family = unix.AF_INET6
		r.name.Addr = dst.As16()
		pi := unix.Inet6Pktinfo{Addr: src.As16()}
		oob = cmsg(oob, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, (*[unix.SizeofInet6Pktinfo]byte)(unsafe.Pointer(&pi))[:])
		oob = cmsg(oob, unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT, intBytes(ttl))
		r.tosOff = len(oob) + unix.CmsgLen(0)
		oob = cmsg(oob, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, intBytes(0))
	}
	r.oobLen = len(oob)
	nameLen := uint32(unix.SizeofSockaddrInet6)
	if src.Is4() {
		nameLen = unix.SizeofSockaddrInet4
	}
	r.hdrs = make([]unix.Mmsghdr, senderBatch)
	r.iovs = make([]unix.Iovec, senderBatch)
	r.oobs = make([]byte, senderBatch*r.oobLen)
	for i := range r.hdrs {
		o := r.oobs[i*r.oobLen : (i+1)*r.oobLen]
		copy(o, oob)
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.name))
		h.Namelen = nameLen
		h.Iov, h.Iovlen = &r.iovs[i], 1
		h.Control = &o[0]
		h.SetControllen(len(o))
	}
	r.batchF = r.writeBatch
	return r
}

// SendBatch implements Sender with sendmmsg, up to senderBatch packets a
// call. It does not allocate.
func (r *rawSender) SendBatch(pkts [][]byte, tos []uint8) (sent, tooBig int, bytes uint64, err error) {
	if len(tos) < len(pkts) {
		return 0, 0, 0, unix.EINVAL
	}
	for len(pkts) > 0 {
		n := min(len(pkts), senderBatch)
		for i := 0; i < n; i++ {
			r.iovs[i].Base = &pkts[i][0]
			r.iovs[i].SetLen(len(pkts[i]))
			*(*int32)(unsafe.Pointer(&r.oobs[i*r.oobLen+r.tosOff])) = int32(tos[i])
		}
		r.bn, r.bsent = n, 0
		for r.bsent < r.bn {
			r.bErr = 0
			before := r.bsent
			// Control, not Write: Write would take the descriptor's
			// write lock, and every interface sharing the socket would
			// wait for the others' sends, blocked ones included.
			werr := r.sock.rc.Control(r.batchF)
			for i := before; i < r.bsent; i++ {
				bytes += uint64(r.hdrs[i].Len) // what sendmmsg says it sent
			}
			sent += r.bsent - before
			if werr != nil {
				return sent, tooBig, bytes, werr // closed under us
			}
			switch r.bErr {
			case 0:
			case unix.EMSGSIZE, unix.EPERM:
				// The packet at bsent failed for what it is: too big
				// for a DF path (tunneldf), or refused by a firewall
				// rule. Go on after it.
				if r.bErr == unix.EMSGSIZE {
					tooBig++
				} else {
					err = r.bErr
				}
				r.bsent++
			default:
				// Anything else is the socket's or the route's, and
				// the batch shares source, destination and TTL: no
				// room (a raw socket never waits for it: ENOBUFS once
				// twice its send buffer is in flight; EAGAIN, a wait
				// that outlasted sendTimeout), no route, a source the
				// namespace lacks. The rest of the batch is dropped
				// (counted as errors by the caller), as a full
				// interface queue drops, rather than failing one
				// system call per packet.
				return sent, tooBig, bytes, r.bErr
			}
		}
		for i := 0; i < n; i++ {
			r.iovs[i].Base = nil // keep no frame buffer reachable from here
		}
		pkts, tos = pkts[n:], tos[n:]
	}
	return sent, tooBig, bytes, err
}

// writeBatch is the RawConn callback of SendBatch: it sends from bsent on,
// and stops at the first packet the kernel refuses, recording its errno
// (ENOBUFS: no room to queue it, EAGAIN: a wait outlasted sendTimeout).
func (r *rawSender) writeBatch(fd uintptr) {
	for r.bsent < r.bn {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[r.bsent])), uintptr(r.bn-r.bsent), 0, 0, 0)
		switch e {
		case 0:
			r.bsent += int(n)
		case unix.EINTR:
		default:
			r.bErr = e
			return
		}
	}
}

// Close gives the shared socket back.
func (r *rawSender) Close() error {
	r.release()
	return nil
}
