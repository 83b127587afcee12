package erspan

import "encoding/binary"

// Bits of the first ERSPAN header word, the same for Type II and III
// (spec/erspan.md §1).
const (
	verShift     = 28
	vlanShift    = 16
	vlanMask     = 0xfff
	cosShift     = 13
	cosMask      = 0x7
	encapShift   = 11
	encapMask    = 0x3
	truncatedBit = 1 << 10
	sessionMask  = 0x3ff
)

// Bits of the second Type II word and the third Type III word (spec §1).
const (
	indexMask   = 0xfffff // Type II word 1, bits 19-0
	sgtShift    = 16
	pduBit      = 1 << 15
	ftShift     = 10
	ftMask      = 0x1f
	hwShift     = 4
	hwMask      = 0x3f
	dirShift    = 3
	graShift    = 1
	graMask     = 0x3
	platformBit = 1
	// The platform ID is the first 6 bits of the platform subheader.
	platformIDShift = 2
	platformIDMask  = 0x3f
)

// GRE flags-word bits that a receiver must find zero (spec §1 and §4):
// R, s, recursion control and the reserved flag bits. The version bits are
// checked separately, because they have their own Error.
const (
	greVersionMask  = 0x0007
	greRecurMask    = 0x0700
	greReservedMask = 0x00f8
	greDropMask     = GREFlagR | GREFlagStrict | greRecurMask | greReservedMask
)

// Decode decodes the GRE + ERSPAN packet that starts at b[0], the payload of
// IP protocol 47, into *p. It resets *p first and returns nil or one of the
// Error values, never another error type. It never reads outside b, never
// panics and does not allocate.
//
// The checks come in this order (spec/erspan.md §1, §4):
//
//   - fewer than 4 bytes: ErrShort;
//   - GRE version not 0: ErrGREVersion;
//   - R, s, recursion control or reserved flag bits set: ErrGREFlags;
//   - protocol neither 0x88BE nor 0x22EB: ErrNotERSPAN;
//   - shorter than the GRE header its C, K and S flags announce: ErrShort;
//   - C set and the RFC 1071 checksum over all of b is wrong: ErrChecksum;
//   - shorter than the ERSPAN header (and the Type III platform subheader
//     when O is set): ErrShort;
//   - Type III with a frame type other than Ethernet: ErrFrameType;
//   - fewer than 14 bytes left for the inner frame: ErrInnerShort.
//
// Once b has 4 bytes, GREFlags and Proto are filled in, whatever the result.
// On ErrFrameType and ErrInnerShort every header field and Offset are filled
// in (Frame stays nil), so that the caller can charge the drop to an
// interface. On success p.Offset is where the inner frame starts and
// p.Frame is b[p.Offset:], an alias of b.
//
// 0x88BE without the GRE S bit is Type I (no ERSPAN header), with S Type II;
// 0x22EB is Type III with or without S. ERSPAN Ver, VLAN, En, Index and the
// GRE sequence number are recorded, not checked, as OpenBSD's erspan(4) does
// (spec §2 Receive, §4).
func Decode(b []byte, p *Packet) error {
	*p = Packet{}
	if len(b) < GREHeaderLen {
		return ErrShort
	}
	flags := binary.BigEndian.Uint16(b[0:])
	p.GREFlags = flags
	p.Proto = binary.BigEndian.Uint16(b[2:])
	if flags&greVersionMask != 0 {
		return ErrGREVersion
	}
	if flags&greDropMask != 0 {
		return ErrGREFlags
	}
	if p.Proto != ProtoERSPAN && p.Proto != ProtoERSPAN3 {
		return ErrNotERSPAN
	}

	// Optional words in the order checksum (+ reserved), key, sequence
	// (RFC 2890 §2, spec §1): the header length comes from the flags.
	off := GREHeaderLen
	if flags&GREFlagC != 0 {
		off += 4
	}
	if flags&GREFlagK != 0 {
		if len(b) < off+4 {
			return ErrShort
		}
		p.HasKey, p.Key = true, binary.BigEndian.Uint32(b[off:])
		off += 4
	}
	if flags&GREFlagS != 0 {
		if len(b) < off+4 {
			return ErrShort
		}
		p.HasSeq, p.Seq = true, binary.BigEndian.Uint32(b[off:])
		off += 4
	}
	if len(b) < off {
		return ErrShort // C alone, cut inside the checksum word
	}
	// RFC 2784 §2.5: the checksum covers the GRE header and the payload.
	// Linux verifies it (spec §4), so a wrong one is not ours to deliver.
	if flags&GREFlagC != 0 && !checksumOK(b) {
		return ErrChecksum
	}

	switch {
	case p.Proto == ProtoERSPAN && !p.HasSeq:
		// Type I: the frame follows the GRE header directly (spec §1).
		p.Type = TypeI
	case p.Proto == ProtoERSPAN:
		p.Type = TypeII
		if len(b) < off+TypeIIHeaderLen {
			return ErrShort
		}
		decodeWord0(binary.BigEndian.Uint32(b[off:]), p)
		// Word 1 bits 31-20 are reserved: ignored, not checked.
		p.Index = binary.BigEndian.Uint32(b[off+4:]) & indexMask
		off += TypeIIHeaderLen
	default:
		p.Type = TypeIII
		if len(b) < off+TypeIIIHeaderLen {
			return ErrShort
		}
		decodeWord0(binary.BigEndian.Uint32(b[off:]), p)
		p.Timestamp = binary.BigEndian.Uint32(b[off+4:])
		w2 := binary.BigEndian.Uint32(b[off+8:])
		p.SGT = uint16(w2 >> sgtShift)
		p.PDU = w2&pduBit != 0
		p.FrameType = uint8(w2>>ftShift) & ftMask
		p.HWID = uint8(w2>>hwShift) & hwMask
		p.Direction = uint8(w2>>dirShift) & 1
		p.Granularity = uint8(w2>>graShift) & graMask
		p.HasPlatform = w2&platformBit != 0
		off += TypeIIIHeaderLen
		if p.HasPlatform {
			// spec §1: 8 bytes whose first 6 bits are the platform
			// ID; the rest is platform-specific and skipped.
			if len(b) < off+PlatformHeaderLen {
				return ErrShort
			}
			p.PlatformID = b[off] >> platformIDShift
			off += PlatformHeaderLen
		}
		if p.FrameType != 0 {
			// Not an Ethernet frame: nothing a TAP can carry.
			p.Offset = off
			return ErrFrameType
		}
	}
	if len(b)-off < EthernetMinLen {
		// OpenBSD drops inner frames shorter than an Ethernet header
		// (spec §2 Receive, §4).
		p.Offset = off
		return ErrInnerShort
	}
	p.Offset = off
	p.Frame = b[off:]
	return nil
}

// decodeWord0 fills the fields of the first ERSPAN word, laid out alike in
// Type II and III (spec §1; Type III calls En "BSO").
func decodeWord0(w uint32, p *Packet) {
	p.Version = uint8(w >> verShift)
	p.VLAN = uint16(w>>vlanShift) & vlanMask
	p.COS = uint8(w>>cosShift) & cosMask
	p.Encap = uint8(w>>encapShift) & encapMask
	p.Truncated = w&truncatedBit != 0
	p.Session = uint16(w) & sessionMask
}

// Checksum is the RFC 1071 Internet checksum of b, to be stored in a
// header whose checksum field was zero when b was summed (IPv4, ICMP, GRE),
// for the tools and tests that build packets.
func Checksum(b []byte) uint16 { return ^onesSum(b) }

// checksumOK reports whether the RFC 1071 Internet checksum of b, checksum
// field included, verifies: the one's complement sum of its 16-bit words
// (an odd last byte padded with zero) is 0xffff.
func checksumOK(b []byte) bool {
	return onesSum(b) == 0xffff
}

// onesSum is the folded one's complement sum of b's big-endian 16-bit words.
// Adding 32-bit words into 64 bits and folding at the end gives the same
// result as adding 16-bit words with end-around carry, because 2^16 = 1
// modulo 0xffff (RFC 1071 §2 (B)). The 64-bit sum grows by less than 2^33
// per 8 bytes, so it cannot overflow below 2^34 bytes, far above the 64 KiB
// of an IP packet.
func onesSum(b []byte) uint16 {
	var s uint64
	for len(b) >= 8 {
		s += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}
