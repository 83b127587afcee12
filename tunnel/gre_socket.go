package tunnel

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// Message is one received GRE packet.
type Message struct {
	Src, Dst netip.Addr // outer source (the switch) and destination (ours)
	GRE      []byte     // the GRE header and all after it; aliases the socket's buffer
	// Err is an erspan.Error (ErrIPHeader, ErrShort) when the outer header
	// could not be read; GRE is nil then.
	Err error
}

// mmsghdr is struct mmsghdr of recvmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// GRESocket receives ERSPAN packets from a raw IPPROTO_GRE socket in
// batches. Only one goroutine may call ReadBatch.
//
// Why not golang.org/x/net's ReadBatch (design.md's first choice): it
// allocates per call (its mmsghdr array) and per message (a net.Addr),
// and the receive path must allocate nothing. recvmmsg is called directly
// here, through the netpoller, on arrays made once.
type GRESocket struct {
	f      *os.File
	rc     syscall.RawConn
	family int

	hdrs  []mmsghdr
	bufs  [][]byte
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
	oobs  [][]byte
	msgs  []Message

	n      int
	errno  syscall.Errno
	readFn func(fd uintptr) bool
	drops  atomic.Uint64
	closed atomic.Bool
}

// ListenGRE opens a raw GRE socket of family 4 or 6 in the calling thread's
// network namespace. A classic BPF filter in the kernel passes only GRE
// carrying ERSPAN (0x88BE, 0x22EB); rcvbuf bytes of receive buffer
// (SO_RCVBUFFORCE, else SO_RCVBUF), SO_RXQ_OVFL to learn of kernel drops,
// and for IPv6 IPV6_RECVPKTINFO for the local address, which a raw IPv6
// socket does not otherwise give. ReadBatch reads up to batch packets of up
// to bufSize bytes each. The socket is never used to send.
func ListenGRE(family, batch, bufSize, rcvbuf int) (*GRESocket, error) {
	af := unix.AF_INET
	if family == 6 {
		af = unix.AF_INET6
	} else if family != 4 {
		return nil, fmt.Errorf("address family %d: %w", family, unix.EAFNOSUPPORT)
	}
	fd, err := unix.Socket(af, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, erspan.IPProtoGRE)
	if err != nil {
		return nil, fmt.Errorf("raw GRE socket: %w", err)
	}
	if err := setupListener(fd, family, rcvbuf); err != nil {
		unix.Close(fd)
		return nil, err
	}
	s := &GRESocket{f: os.NewFile(uintptr(fd), "erspan-recv"), family: family}
	if s.rc, err = s.f.SyscallConn(); err != nil {
		s.f.Close()
		return nil, err
	}
	oobLen := unix.CmsgSpace(4) // SO_RXQ_OVFL
	if family == 6 {
		oobLen += unix.CmsgSpace(unix.SizeofInet6Pktinfo)
	}
	s.hdrs = make([]mmsghdr, batch)
	s.bufs = make([][]byte, batch)
	s.iovs = make([]unix.Iovec, batch)
	s.names = make([]unix.RawSockaddrInet6, batch)
	s.oobs = make([][]byte, batch)
	s.msgs = make([]Message, batch)
	for i := range s.hdrs {
		s.bufs[i] = make([]byte, bufSize)
		s.oobs[i] = make([]byte, oobLen)
		s.iovs[i].Base = &s.bufs[i][0]
		s.iovs[i].SetLen(bufSize)
		h := &s.hdrs[i].hdr
		h.Iov = &s.iovs[i]
		h.Iovlen = 1
		h.Name = (*byte)(unsafe.Pointer(&s.names[i]))
		h.Control = &s.oobs[i][0]
	}
	s.readFn = s.read
	return s, nil
}

// The filter, in classic BPF. On an AF_INET raw socket the program sees the
// packet from its IP header on, so the GRE protocol field is 2 bytes past
// the IP header, whose length the msh instruction takes from the IHL nibble
// (options included). On an AF_INET6 raw socket the kernel has already
// pulled the IPv6 header and its extension headers when the socket filter
// runs, so offset 0 is the GRE header (checked by TestGRESocketIPv6).
var (
	filter4 = []unix.SockFilter{
		{Code: unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH, K: 0},
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: 2},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, K: erspan.ProtoERSPAN},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 1, K: erspan.ProtoERSPAN3},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	}
	filter6 = []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 2},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, K: erspan.ProtoERSPAN},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 1, K: erspan.ProtoERSPAN3},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	}
)

func setupListener(fd, family, rcvbuf int) error {
	prog := filter4
	if family == 6 {
		prog = filter6
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("attach the ERSPAN filter: %w", err)
	}
	// FORCE goes past net.core.rmem_max, which is small by default; it
	// needs CAP_NET_ADMIN, so fall back to what an unprivileged setting
	// gets.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			return fmt.Errorf("SO_RCVBUF: %w", err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1); err != nil {
		return fmt.Errorf("SO_RXQ_OVFL: %w", err)
	}
	if family == 6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
			return fmt.Errorf("IPV6_RECVPKTINFO: %w", err)
		}
	}
	return nil
}

// ReadBatch blocks, in the netpoller, until at least one packet is there,
// reads up to the batch size with one recvmmsg, and returns them. The
// slice and the buffers it points into are reused by the next call. It does
// not allocate. After Close it returns net.ErrClosed.
func (s *GRESocket) ReadBatch() ([]Message, error) {
	for i := range s.hdrs {
		h := &s.hdrs[i].hdr
		// The kernel overwrites these with what it used.
		h.Namelen = unix.SizeofSockaddrInet6
		h.SetControllen(len(s.oobs[i]))
		h.Flags = 0
	}
	s.n, s.errno = 0, 0
	if err := s.rc.Read(s.readFn); err != nil {
		if s.closed.Load() {
			return nil, net.ErrClosed
		}
		return nil, err
	}
	if s.errno != 0 {
		return nil, s.errno
	}
	msgs := s.msgs[:s.n]
	for i := range msgs {
		s.parse(i, &msgs[i])
	}
	return msgs, nil
}

// read is the RawConn callback: false asks the netpoller to wait for data.
func (s *GRESocket) read(fd uintptr) bool {
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&s.hdrs[0])), uintptr(len(s.hdrs)), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	s.n, s.errno = int(n), e
	return true
}

func (s *GRESocket) parse(i int, m *Message) {
	h := &s.hdrs[i]
	b := s.bufs[i][:h.n]
	*m = Message{}
	var pktinfo []byte
	oob := s.oobs[i][:h.hdr.Controllen]
	for len(oob) >= unix.SizeofCmsghdr {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		if c.Len < unix.SizeofCmsghdr || int(c.Len) > len(oob) {
			break
		}
		data := oob[unix.CmsgLen(0):c.Len]
		switch {
		case c.Level == unix.SOL_SOCKET && c.Type == unix.SO_RXQ_OVFL && len(data) >= 4:
			// The count of packets dropped so far on this socket.
			s.drops.Store(uint64(binary.NativeEndian.Uint32(data)))
		case c.Level == unix.IPPROTO_IPV6 && c.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pktinfo = data
		}
		next := unix.CmsgSpace(int(c.Len) - unix.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	if h.hdr.Flags&unix.MSG_TRUNC != 0 {
		// Larger than the buffer: what was read is not the packet.
		m.Err = erspan.ErrShort
		return
	}
	if s.family == 4 {
		src, dst, payload, err := erspan.ParseIPv4(b)
		if err != nil {
			m.Err = err
			return
		}
		m.Src, m.Dst, m.GRE = src, dst, payload
		return
	}
	if pktinfo == nil {
		m.Err = erspan.ErrIPHeader
		return
	}
	m.Src = netip.AddrFrom16(s.names[i].Addr)
	m.Dst = netip.AddrFrom16([16]byte(pktinfo[:16]))
	m.GRE = b
}

// KernelDrops is the number of packets the kernel dropped because the
// socket's buffer was full, as of the last packet read.
func (s *GRESocket) KernelDrops() uint64 { return s.drops.Load() }

// Close closes the socket and unblocks a pending ReadBatch.
func (s *GRESocket) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	return s.f.Close()
}
