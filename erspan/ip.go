package erspan

import (
	"encoding/binary"
	"net/netip"
)

// IPv4 protocol number of GRE.
const IPProtoGRE = 47

// ParseIPv4 reads the outer IPv4 header at the start of b, as a raw IPv4
// socket returns it (options included, length from IHL). It returns the
// source and destination addresses and the IP payload, which aliases b and
// is cut to the header's total length (nil with an error). It does not
// check the protocol or the header checksum: behind a raw IP socket the
// kernel has. Packets the IP stack never checked (read from a packet
// socket) go through ParseIPv4Checked.
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

// ParseIPv4Checked is ParseIPv4 that also verifies the header checksum
// (ErrIPHeader when it is wrong), for packets the IP stack never checked.
func ParseIPv4Checked(b []byte) (src, dst netip.Addr, payload []byte, err error) {
	src, dst, payload, err = ParseIPv4(b)
	if err == nil && !checksumOK(b[:int(b[0]&0x0f)*4]) {
		return netip.Addr{}, netip.Addr{}, nil, ErrIPHeader
	}
	return src, dst, payload, err
}
