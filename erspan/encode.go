package erspan

import "encoding/binary"

// HeaderLen is the number of bytes Encode writes for p: the GRE header
// (4 bytes, plus 4 for a key, plus 4 for a sequence number) and the ERSPAN
// header of p.Type. Like Encode it gives Type II a sequence number and Type I
// none, whatever p.HasSeq says. It is 0 for a Type that is not I, II or III,
// for which Encode writes nothing.
//
// For a Packet that Decode filled from a packet without a GRE checksum,
// including on ErrFrameType and ErrInnerShort, HeaderLen(p) == p.Offset.
func HeaderLen(p *Packet) int {
	n := GREHeaderLen
	if p.HasKey {
		n += 4
	}
	switch p.Type {
	case TypeI:
	case TypeII:
		n += 4 + TypeIIHeaderLen
	case TypeIII:
		if p.HasSeq {
			n += 4
		}
		n += TypeIIIHeaderLen
		if p.HasPlatform {
			n += PlatformHeaderLen
		}
	default:
		return 0
	}
	return n
}

// Encode writes the GRE and ERSPAN headers for p at the start of b and
// returns their length, HeaderLen(p); the caller puts the inner frame right
// after them. It does not write the frame, never allocates and is meant for
// the transmit hot path.
//
// The GRE protocol comes from p.Type: 0x88BE for Type I and II, 0x22EB for
// Type III (spec/erspan.md §1). The GRE flags come from p.HasKey and
// p.HasSeq, except that Type II always has a sequence number (it is what
// tells it from Type I on the wire) and Type I never has one; p.GREFlags and
// p.Proto are ignored, and GRE checksums are not supported. The ERSPAN
// header carries Ver 1 for Type II and Ver 2 for Type III, whatever
// p.Version says, zero reserved bits, and every field masked to its width.
// With p.HasPlatform, Type III gets the 8-byte platform subheader with
// p.PlatformID in its first 6 bits and zero elsewhere.
//
// It returns ErrShort, writing nothing, when len(b) < HeaderLen(p), and
// ErrNotERSPAN for a Type other than I, II and III.
//
// Round trip: if Decode returned nil, ErrFrameType or ErrInnerShort for a
// packet b without the GRE C bit, Encode writes exactly b[:p.Offset] except
// for the Ver field (bits 31-28 of the first ERSPAN word), the reserved bits
// 31-20 of the second Type II word and the platform subheader bits after its
// ID, which it writes as described above. With C set, the same holds once
// the C bit and the checksum word are taken out of b.
func Encode(b []byte, p *Packet) (int, error) {
	var flags, proto uint16
	var ver uint32
	n := GREHeaderLen
	if p.HasKey {
		flags |= GREFlagK
		n += 4
	}
	switch p.Type {
	case TypeI:
		proto = ProtoERSPAN
	case TypeII:
		proto, ver = ProtoERSPAN, 1
		flags |= GREFlagS
		n += 4 + TypeIIHeaderLen
	case TypeIII:
		proto, ver = ProtoERSPAN3, 2
		if p.HasSeq {
			flags |= GREFlagS
			n += 4
		}
		n += TypeIIIHeaderLen
		if p.HasPlatform {
			n += PlatformHeaderLen
		}
	default:
		return 0, ErrNotERSPAN
	}
	if len(b) < n {
		return 0, ErrShort
	}
	b = b[:n] // one bounds check for all the writes below

	binary.BigEndian.PutUint32(b, uint32(flags)<<16|uint32(proto))
	off := GREHeaderLen
	if p.HasKey {
		binary.BigEndian.PutUint32(b[off:], p.Key)
		off += 4
	}
	if flags&GREFlagS != 0 {
		binary.BigEndian.PutUint32(b[off:], p.Seq)
		off += 4
	}
	if p.Type == TypeI {
		return n, nil
	}

	w0 := ver<<verShift |
		uint32(p.VLAN&vlanMask)<<vlanShift |
		uint32(p.COS&cosMask)<<cosShift |
		uint32(p.Encap&encapMask)<<encapShift |
		uint32(p.Session&sessionMask)
	if p.Truncated {
		w0 |= truncatedBit
	}
	binary.BigEndian.PutUint32(b[off:], w0)
	if p.Type == TypeII {
		binary.BigEndian.PutUint32(b[off+4:], p.Index&indexMask)
		return n, nil
	}

	binary.BigEndian.PutUint32(b[off+4:], p.Timestamp)
	w2 := uint32(p.SGT)<<sgtShift |
		uint32(p.FrameType&ftMask)<<ftShift |
		uint32(p.HWID&hwMask)<<hwShift |
		uint32(p.Direction&1)<<dirShift |
		uint32(p.Granularity&graMask)<<graShift
	if p.PDU {
		w2 |= pduBit
	}
	if p.HasPlatform {
		w2 |= platformBit
	}
	binary.BigEndian.PutUint32(b[off+8:], w2)
	if p.HasPlatform {
		off += TypeIIIHeaderLen
		binary.BigEndian.PutUint64(b[off:], uint64((p.PlatformID&platformIDMask)<<platformIDShift)<<56)
	}
	return n, nil
}
