// Package frame builds the inner Ethernet frames that the benchmark
// programs send: one shape everywhere, so that the ceiling, the decap and
// the encap measurements move the same bytes.
package frame

import (
	"encoding/binary"

	"github.com/erspan-linux/erspan/erspan"
)

// Min and Max bound the sizes Build accepts: the shortest frame with an
// IPv4 and a UDP header, and a full 1500-byte MTU frame.
const (
	Min = 14 + 20 + 8
	Max = 1514
)

// Build returns an Ethernet + IPv4 + UDP frame of exactly size bytes (no
// FCS) between two documentation addresses. i varies the IP ID and the UDP
// source port, so that a ring of frames looks like many flows rather than
// one repeated packet (a receiver that hashes flows sees a spread).
func Build(size, i int) []byte {
	b := make([]byte, size)
	copy(b[0:6], []byte{0x02, 0, 0x5e, 0, 0x53, 0x20})
	copy(b[6:12], []byte{0x02, 0, 0x5e, 0, 0x53, 0x10})
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(size-14))
	binary.BigEndian.PutUint16(ip[4:], uint16(i))
	ip[8], ip[9] = 64, 17
	copy(ip[12:16], []byte{203, 0, 113, 10})
	copy(ip[16:20], []byte{203, 0, 113, 20})
	binary.BigEndian.PutUint16(ip[10:], erspan.Checksum(ip))
	udp := b[34:]
	binary.BigEndian.PutUint16(udp[0:], uint16(1024+i%50000))
	binary.BigEndian.PutUint16(udp[2:], 9)
	binary.BigEndian.PutUint16(udp[4:], uint16(size-34))
	// UDP checksum 0: none (IPv4 allows it), the payload stays zero.
	return b
}
