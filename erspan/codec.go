package erspan

import "encoding/binary"

// Bits of the first ERSPAN header word (Type II and III alike), spec §1.
const (
	verShift     = 28
	vlanShift    = 16
	cosShift     = 13
	encapShift   = 11
	truncatedBit = 1 << 10
	sessionMask  = 0x3ff
)

// greReservedMask covers what a receiver must find zero in the GRE flags
// word: R, s, recursion control, the reserved flag bits (spec §1 and §4).
const greReservedMask = GREFlagR | GREFlagStrict | 0x0700 | 0x00f8

// Decode decodes the GRE + ERSPAN packet that starts at b[0] (the payload of
// IP protocol 47) into *p, which it resets first. It returns nil or one of
// the Error values, never another error. p.Frame aliases b.
//
// The GRE header length comes from its flags (checksum, key and sequence
// words, in that order); a checksum, when present, is verified. ERSPAN Ver,
// VLAN, En, Index and the sequence number are not checked, as in OpenBSD
// (spec §2 Receive). On ErrFrameType and ErrInnerShort the header fields are
// filled in, so that the caller can charge the drop to an interface.
func Decode(b []byte, p *Packet) error {
	*p = Packet{}
	if len(b) < GREHeaderLen {
		return ErrShort
	}
	flags := binary.BigEndian.Uint16(b[0:2])
	p.GREFlags = flags
	p.Proto = binary.BigEndian.Uint16(b[2:4])
	if flags&0x7 != 0 {
		return ErrGREVersion
	}
	if flags&greReservedMask != 0 {
		return ErrGREFlags
	}
	if p.Proto != ProtoERSPAN && p.Proto != ProtoERSPAN3 {
		return ErrNotERSPAN
	}
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
		return ErrShort
	}
	if flags&GREFlagC != 0 && checksum(b) != 0 {
		// RFC 2784: the checksum covers the GRE header and payload;
		// summed with the checksum field in place, a good packet gives 0.
		return ErrChecksum
	}
	switch {
	case p.Proto == ProtoERSPAN && !p.HasSeq:
		// Type I: no ERSPAN header at all (spec §1; Wireshark agrees).
		p.Type = TypeI
	case p.Proto == ProtoERSPAN:
		p.Type = TypeII
		if len(b) < off+TypeIIHeaderLen {
			return ErrShort
		}
		decodeWord0(binary.BigEndian.Uint32(b[off:]), p)
		p.Index = binary.BigEndian.Uint32(b[off+4:]) & 0xfffff
		off += TypeIIHeaderLen
	default:
		p.Type = TypeIII
		if len(b) < off+TypeIIIHeaderLen {
			return ErrShort
		}
		decodeWord0(binary.BigEndian.Uint32(b[off:]), p)
		p.Timestamp = binary.BigEndian.Uint32(b[off+4:])
		w2 := binary.BigEndian.Uint32(b[off+8:])
		p.SGT = uint16(w2 >> 16)
		p.PDU = w2&(1<<15) != 0
		p.FrameType = uint8(w2>>10) & 0x1f
		p.HWID = uint8(w2>>4) & 0x3f
		p.Direction = uint8(w2>>3) & 1
		p.Granularity = uint8(w2>>1) & 3
		p.HasPlatform = w2&1 != 0
		off += TypeIIIHeaderLen
		if p.HasPlatform {
			if len(b) < off+PlatformHeaderLen {
				return ErrShort
			}
			p.PlatformID = b[off] >> 2
			off += PlatformHeaderLen
		}
		if p.FrameType != 0 {
			return ErrFrameType
		}
	}
	if len(b)-off < EthernetMinLen {
		return ErrInnerShort
	}
	p.Offset = off
	p.Frame = b[off:]
	return nil
}

func decodeWord0(w uint32, p *Packet) {
	p.Version = uint8(w >> verShift)
	p.VLAN = uint16(w>>vlanShift) & 0xfff
	p.COS = uint8(w>>cosShift) & 7
	p.Encap = uint8(w>>encapShift) & 3
	p.Truncated = w&truncatedBit != 0
	p.Session = uint16(w) & sessionMask
}

// checksum is the RFC 1071 Internet checksum of b, not complemented back:
// 0 means b (checksum field included) verifies.
func checksum(b []byte) uint16 {
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
	return ^uint16(s)
}

// HeaderLen is the number of bytes Encode writes for p.
func HeaderLen(p *Packet) int {
	n := GREHeaderLen
	if p.HasKey {
		n += 4
	}
	switch p.Type {
	case TypeII:
		n += 4 + TypeIIHeaderLen // Type II always carries a sequence number
	case TypeIII:
		if p.HasSeq {
			n += 4
		}
		n += TypeIIIHeaderLen
		if p.HasPlatform {
			n += PlatformHeaderLen
		}
	}
	return n
}

// Encode writes the GRE and ERSPAN headers for p into b and returns their
// length; the caller puts the frame right after them. The GRE protocol
// comes from p.Type; Type II always has a sequence number and Ver 1, Type
// III Ver 2, Type I neither sequence number nor ERSPAN header. Fields are
// masked to their widths; checksums are not supported (p.GREFlags is
// ignored). It returns ErrShort when b is too small, and never allocates.
//
// Round trip: for any p that Decode filled from a packet without a GRE
// checksum, Encode writes the same header bytes, except reserved bits,
// the Ver field of Type II and III and the platform subheader past its ID.
func Encode(b []byte, p *Packet) (int, error) {
	n := HeaderLen(p)
	if len(b) < n {
		return 0, ErrShort
	}
	var flags uint16
	proto := uint16(ProtoERSPAN)
	hasSeq := p.HasSeq
	switch p.Type {
	case TypeI:
		hasSeq = false
	case TypeII:
		hasSeq = true
	case TypeIII:
		proto = ProtoERSPAN3
	default:
		return 0, ErrNotERSPAN
	}
	if p.HasKey {
		flags |= GREFlagK
	}
	if hasSeq {
		flags |= GREFlagS
	}
	binary.BigEndian.PutUint16(b[0:], flags)
	binary.BigEndian.PutUint16(b[2:], proto)
	off := GREHeaderLen
	if p.HasKey {
		binary.BigEndian.PutUint32(b[off:], p.Key)
		off += 4
	}
	if hasSeq {
		binary.BigEndian.PutUint32(b[off:], p.Seq)
		off += 4
	}
	if p.Type == TypeI {
		return off, nil
	}
	var ver uint32 = 1
	if p.Type == TypeIII {
		ver = 2
	}
	w0 := ver<<verShift | uint32(p.VLAN&0xfff)<<vlanShift | uint32(p.COS&7)<<cosShift |
		uint32(p.Encap&3)<<encapShift | uint32(p.Session&sessionMask)
	if p.Truncated {
		w0 |= truncatedBit
	}
	binary.BigEndian.PutUint32(b[off:], w0)
	if p.Type == TypeII {
		binary.BigEndian.PutUint32(b[off+4:], p.Index&0xfffff)
		return off + TypeIIHeaderLen, nil
	}
	binary.BigEndian.PutUint32(b[off+4:], p.Timestamp)
	w2 := uint32(p.SGT)<<16 | uint32(p.FrameType&0x1f)<<10 | uint32(p.HWID&0x3f)<<4 |
		uint32(p.Direction&1)<<3 | uint32(p.Granularity&3)<<1
	if p.PDU {
		w2 |= 1 << 15
	}
	if p.HasPlatform {
		w2 |= 1
	}
	binary.BigEndian.PutUint32(b[off+8:], w2)
	off += TypeIIIHeaderLen
	if p.HasPlatform {
		b[off] = p.PlatformID << 2
		clear(b[off+1 : off+PlatformHeaderLen])
		off += PlatformHeaderLen
	}
	return off, nil
}
