package erspan

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"testing"
)

// This file holds the test-side builders and checks shared by the unit,
// capture and fuzz tests. They are written from spec/erspan.md §1 directly,
// independently of decode.go and encode.go, so that a mistake in one is not
// repeated in the other.

// refChecksum is the RFC 1071 checksum the plain way: 16-bit words with the
// end-around carry folded at every step, complemented.
func refChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
		s = s&0xffff + s>>16
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// buildGRE returns a GRE header with the given flags word and protocol,
// the optional words the flags announce (checksum, key, sequence, RFC 2890
// order), then rest. With C set the checksum is computed over the result.
func buildGRE(flags, proto uint16, key, seq uint32, rest ...[]byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, flags)
	b = binary.BigEndian.AppendUint16(b, proto)
	if flags&0x8000 != 0 {
		b = append(b, 0, 0, 0, 0)
	}
	if flags&0x2000 != 0 {
		b = binary.BigEndian.AppendUint32(b, key)
	}
	if flags&0x1000 != 0 {
		b = binary.BigEndian.AppendUint32(b, seq)
	}
	for _, r := range rest {
		b = append(b, r...)
	}
	if flags&0x8000 != 0 {
		binary.BigEndian.PutUint16(b[4:], refChecksum(b))
	}
	return b
}

// erspanWord0 is the first ERSPAN word (Type II and III), spec §1.
func erspanWord0(ver, vlan, cos, en uint32, t bool, session uint32) uint32 {
	w := ver<<28 | vlan<<16 | cos<<13 | en<<11 | session
	if t {
		w |= 1 << 10
	}
	return w
}

// typeIIHeader is the 8-byte Type II header.
func typeIIHeader(word0, reserved, index uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, word0)
	return binary.BigEndian.AppendUint32(b, reserved<<20|index)
}

// typeIIIHeader is the 12-byte Type III header, then platform (the 8-byte
// subheader) when the O bit (word2 bit 0) is set.
func typeIIIHeader(word0, timestamp, word2 uint32, platform []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, word0)
	b = binary.BigEndian.AppendUint32(b, timestamp)
	b = binary.BigEndian.AppendUint32(b, word2)
	return append(b, platform...)
}

// typeIIIWord2 is the third Type III word, spec §1.
func typeIIIWord2(sgt uint32, pdu bool, ft, hw, dir, gra uint32, o bool) uint32 {
	w := sgt<<16 | ft<<10 | hw<<4 | dir<<3 | gra<<1
	if pdu {
		w |= 1 << 15
	}
	if o {
		w |= 1
	}
	return w
}

// testFrame returns an n-byte "Ethernet frame" whose bytes are all distinct
// from their neighbours, so that an offset error shows.
func testFrame(n int) []byte {
	f := make([]byte, n)
	for i := range f {
		f[i] = byte(0xa0 + i)
	}
	return f
}

// samePacket reports how q differs from p, comparing Frame by content.
func samePacket(p, q *Packet) string {
	a, b := *p, *q
	a.Frame, b.Frame = nil, nil
	if !reflect.DeepEqual(a, b) {
		return fmt.Sprintf("got %+v, want %+v", b, a)
	}
	if !bytes.Equal(p.Frame, q.Frame) || (p.Frame == nil) != (q.Frame == nil) {
		return fmt.Sprintf("frame %x, want %x", q.Frame, p.Frame)
	}
	return ""
}

// wantEncoded is the round-trip property of Encode (see its doc comment)
// written out: the header bytes b[:p.Offset] that Decode read into p, as
// Encode must write them back. From b it takes out the GRE checksum word and
// C bit (Encode does not support checksums), sets Ver to 1 (Type II) or 2
// (Type III), clears the Type II reserved bits and the platform subheader
// after its 6-bit ID.
func wantEncoded(b []byte, p *Packet) []byte {
	h := append([]byte(nil), b[:p.Offset]...)
	if h[0]&0x80 != 0 {
		h = append(h[:4], h[8:]...)
		h[0] &^= 0x80
	}
	e := 4
	if p.HasKey {
		e += 4
	}
	if p.HasSeq {
		e += 4
	}
	switch p.Type {
	case TypeII:
		h[e] = h[e]&0x0f | 1<<4
		h[e+4] = 0
		h[e+5] &= 0x0f
	case TypeIII:
		h[e] = h[e]&0x0f | 2<<4
		if p.HasPlatform {
			h[e+12] &= 0xfc
			clear(h[e+13 : e+20])
		}
	}
	return h
}

// checkDecoded checks what must hold of every Decode result for input b:
// the error is an Error; on success Frame is the tail of b from Offset, at
// least 14 bytes; on success, ErrFrameType and ErrInnerShort, Encode writes
// the header back as wantEncoded says, and on success decoding that header
// followed by Frame gives p again, except for Version (now 1 or 2), the C
// bit of GREFlags and Offset (4 less without the checksum word).
func checkDecoded(t testing.TB, b []byte, p *Packet, err error) {
	t.Helper()
	if err != nil {
		e, ok := err.(Error)
		if !ok || e == 0 || e >= NumErrors || e == ErrIPHeader {
			t.Fatalf("Decode returned %T %v, not a Decode Error", err, err)
		}
		if p.Frame != nil {
			t.Fatalf("Decode failed (%v) but set Frame", err)
		}
		if e != ErrFrameType && e != ErrInnerShort {
			return
		}
	}
	if p.Offset < GREHeaderLen || p.Offset > len(b) {
		t.Fatalf("Offset %d outside [4, %d]", p.Offset, len(b))
	}
	if err == nil {
		if len(p.Frame) < EthernetMinLen {
			t.Fatalf("frame of %d bytes delivered", len(p.Frame))
		}
		if p.Offset+len(p.Frame) != len(b) || &p.Frame[0] != &b[p.Offset] || cap(p.Frame) != cap(b)-p.Offset {
			t.Fatalf("Frame is not b[Offset:] (Offset %d, len %d of %d)", p.Offset, len(p.Frame), len(b))
		}
	}

	hl := HeaderLen(p)
	enc := make([]byte, hl+len(p.Frame))
	n, eerr := Encode(enc, p)
	if eerr != nil || n != hl {
		t.Fatalf("Encode = %d, %v; want %d, nil", n, eerr, hl)
	}
	want := wantEncoded(b, p)
	if !bytes.Equal(enc[:n], want) {
		t.Fatalf("Encode wrote\n%x, want\n%x\n(decoded from %x, %+v)", enc[:n], want, b[:p.Offset], *p)
	}
	if err != nil {
		return
	}

	copy(enc[n:], p.Frame)
	var q Packet
	if err := Decode(enc, &q); err != nil {
		t.Fatalf("re-decoding %x: %v", enc, err)
	}
	w := *p
	w.GREFlags &^= GREFlagC
	if p.GREFlags&GREFlagC != 0 {
		w.Offset -= 4
	}
	switch p.Type {
	case TypeII:
		w.Version = 1
	case TypeIII:
		w.Version = 2
	}
	if d := samePacket(&w, &q); d != "" {
		t.Fatalf("re-decoded packet differs: %s", d)
	}
}
