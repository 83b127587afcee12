package erspan

import (
	"encoding/binary"
	"net/netip"
)

// IPv4 protocol number of GRE.
const IPProtoGRE = 47

// ParseIPv4 reads the outer IPv4 header at the start of b, as a raw IPv4
// socket returns it (options included, length from IHL). It returns the
// source and destination addresses and the IP payload, which aliases b and is
// cut to the header's total length. It does not check the protocol or the
// header checksum: behind a raw IP socket the kernel has; callers that read
// packets the IP stack never checked (a packet socket) verify the checksum
// themselves (Checksum of the header is 0).
func ParseIPv4(b []byte) (src, dst netip.Addr, payload []byte, err error) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return src, dst, nil, ErrIPHeader
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < 20 || len(b) < ihl {
		return src, dst, nil, ErrIPHeader
	}
	if total < ihl {
		return src, dst, nil, ErrIPHeader
	}
	if total > len(b) {
		// The read was cut short (a buffer smaller than the packet).
		return src, dst, nil, ErrShort
	}
	b = b[:total]
	src = netip.AddrFrom4([4]byte(b[12:16]))
	dst = netip.AddrFrom4([4]byte(b[16:20]))
	return src, dst, b[ihl:], nil
}
