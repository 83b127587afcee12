package tunnel

import (
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// SocketMark is the SO_MARK of every packet erspand sends. Span rules on a
// bridge skip packets with this mark, so that the ERSPAN packets of a span
// port whose tunnel runs through the same bridge are not mirrored again.
const SocketMark = 0x65727370 // "ersp"

// rawSender is a send-only raw GRE socket bound to the tunnel source and
// connected to its destination. The kernel writes the outer IP header: TTL
// and DF from socket options, TOS / traffic class per packet from a control
// message, fragmentation (with -tunneldf) by the kernel itself.
type rawSender struct {
	f  *os.File
	rc syscall.RawConn

	// Preallocated sendmsg arguments: Send allocates nothing.
	iov     unix.Iovec
	oob     []byte
	msg     unix.Msghdr
	errno   syscall.Errno
	writeFn func(fd uintptr) bool

	// Preallocated sendmmsg arguments for SendBatch, one slot per packet,
	// each with its own TOS control message.
	hdrs   []unix.Mmsghdr
	iovs   []unix.Iovec
	oobs   []byte
	bn     int // packets in the batch
	bsent  int // sent so far
	bErr   syscall.Errno
	batchF func(fd uintptr) bool
}

// senderBatch is how many packets one sendmmsg takes.
const senderBatch = 64

// OpenSender opens the sending socket of a tunnel from src to dst in the
// calling thread's network namespace.
func OpenSender(src, dst netip.Addr, ttl int, df bool) (*rawSender, error) {
	family := unix.AF_INET
	if src.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, erspan.IPProtoGRE)
	if err != nil {
		return nil, fmt.Errorf("raw GRE socket: %w", err)
	}
	if err := setupSender(fd, family, src, dst, ttl, df); err != nil {
		unix.Close(fd)
		return nil, err
	}
	s := &rawSender{f: os.NewFile(uintptr(fd), "erspan-send")}
	if s.rc, err = s.f.SyscallConn(); err != nil {
		s.f.Close()
		return nil, err
	}
	level, typ := unix.IPPROTO_IP, unix.IP_TOS
	if family == unix.AF_INET6 {
		level, typ = unix.IPPROTO_IPV6, unix.IPV6_TCLASS
	}
	s.oob = make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&s.oob[0]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(4))
	s.msg.Iov = &s.iov
	s.msg.Iovlen = 1
	s.msg.Control = &s.oob[0]
	s.msg.SetControllen(len(s.oob))
	s.writeFn = s.write
	s.hdrs = make([]unix.Mmsghdr, senderBatch)
	s.iovs = make([]unix.Iovec, senderBatch)
	s.oobs = make([]byte, senderBatch*len(s.oob))
	for i := range s.hdrs {
		o := s.oobs[i*len(s.oob) : (i+1)*len(s.oob)]
		copy(o, s.oob) // the cmsghdr, its data set per packet
		h := &s.hdrs[i].Hdr
		h.Iov, h.Iovlen = &s.iovs[i], 1
		h.Control = &o[0]
		h.SetControllen(len(o))
	}
	s.batchF = s.writeBatch
	return s, nil
}

// SendBatch sends pkts[i] with TOS tos[i] through sendmmsg, up to
// senderBatch at a time. It reports how many went out and how many were
// refused as too big (DF set); the rest failed, err saying why. It does
// not allocate.
func (s *rawSender) SendBatch(pkts [][]byte, tos []uint8) (sent, tooBig int, err error) {
	if len(tos) < len(pkts) {
		return 0, 0, unix.EINVAL
	}
	for len(pkts) > 0 {
		n := min(len(pkts), senderBatch)
		for i := 0; i < n; i++ {
			s.iovs[i].Base = &pkts[i][0]
			s.iovs[i].SetLen(len(pkts[i]))
			*(*int32)(unsafe.Pointer(&s.oobs[i*len(s.oob)+unix.CmsgLen(0)])) = int32(tos[i])
		}
		s.bn, s.bsent = n, 0
		for s.bsent < s.bn {
			s.bErr = 0
			before := s.bsent
			if werr := s.rc.Write(s.batchF); werr != nil {
				return sent + s.bsent - before, tooBig, werr // closed under us
			}
			sent += s.bsent - before
			if s.bErr != 0 {
				// The packet at bsent failed alone; go on after it.
				if s.bErr == unix.EMSGSIZE {
					tooBig++
				} else {
					err = s.bErr
				}
				s.bsent++
			}
		}
		for i := 0; i < n; i++ {
			s.iovs[i].Base = nil // keep no frame buffer reachable from here
		}
		pkts, tos = pkts[n:], tos[n:]
	}
	return sent, tooBig, err
}

// writeBatch is the RawConn callback of SendBatch: it sends from bsent on,
// and stops at the first packet the kernel refuses, recording its errno.
func (s *rawSender) writeBatch(fd uintptr) bool {
	for s.bsent < s.bn {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.hdrs[s.bsent])), uintptr(s.bn-s.bsent), 0, 0, 0)
		switch e {
		case 0:
			s.bsent += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			s.bErr = e
			return true
		}
	}
	return true
}

func setupSender(fd, family int, src, dst netip.Addr, ttl int, df bool) error {
	// A raw GRE socket receives a copy of every GRE packet its address
	// filter lets through: connected to dst, every packet from dst, which
	// for a bidirectional tunnel is the whole ERSPAN stream. This socket
	// only sends (design.md, Data path): a BPF program that accepts
	// nothing makes the kernel drop those copies at once.
	if err := attachDropAll(fd); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, SocketMark); err != nil {
		return fmt.Errorf("SO_MARK: %w", err)
	}
	var sa, da unix.Sockaddr
	if family == unix.AF_INET {
		// FREEBIND: the tunnel may be configured before its source
		// address is, as on OpenBSD.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1); err != nil {
			return fmt.Errorf("IP_FREEBIND: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
			return fmt.Errorf("IP_TTL %d: %w", ttl, err)
		}
		// DF set: the kernel refuses oversize packets with EMSGSIZE.
		// DF clear: it fragments them (OpenBSD's nodf default).
		pmtu := unix.IP_PMTUDISC_DONT
		if df {
			pmtu = unix.IP_PMTUDISC_DO
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, pmtu); err != nil {
			return fmt.Errorf("IP_MTU_DISCOVER: %w", err)
		}
		sa, da = &unix.SockaddrInet4{Addr: src.As4()}, &unix.SockaddrInet4{Addr: dst.As4()}
	} else {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
			return fmt.Errorf("IPV6_FREEBIND: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, ttl); err != nil {
			return fmt.Errorf("IPV6_UNICAST_HOPS %d: %w", ttl, err)
		}
		// IPv6 routers never fragment: without DF the source does, to
		// the outgoing link's MTU; with it, oversize packets are refused.
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
		sa, da = &unix.SockaddrInet6{Addr: src.As16()}, &unix.SockaddrInet6{Addr: dst.As16()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind to %s: %w", src, err)
	}
	if err := unix.Connect(fd, da); err != nil {
		return fmt.Errorf("connect to %s: %w", dst, err)
	}
	return nil
}

// Send transmits one GRE packet with outer TOS / traffic class tos. Only
// one goroutine may call it at a time (the interface's transmit loop).
func (s *rawSender) Send(pkt []byte, tos uint8) error {
	if len(pkt) == 0 {
		return nil
	}
	s.iov.Base = &pkt[0]
	s.iov.SetLen(len(pkt))
	*(*int32)(unsafe.Pointer(&s.oob[unix.CmsgLen(0)])) = int32(tos)
	s.errno = 0
	if err := s.rc.Write(s.writeFn); err != nil {
		return err
	}
	s.iov.Base = nil // do not keep the frame buffer reachable from here
	if s.errno != 0 {
		return s.errno
	}
	return nil
}

// write is the RawConn callback: false asks the netpoller to wait until the
// socket is writable again.
func (s *rawSender) write(fd uintptr) bool {
	_, _, e := unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&s.msg)), 0)
	if e == unix.EAGAIN {
		return false
	}
	s.errno = e
	return true
}

func (s *rawSender) Close() error { return s.f.Close() }
