package erspan

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

// The test vector of spec/erspan.md §1 (gopacket's erspan2_test.go), behind
// a GRE header with S: Ver 1, VLAN 0x2aa, COS 4, En 2, T 1, session 0x2aa,
// Reserved 0x155 (ignored), Index 0xF0F0F.
func TestDecodeSpecVector(t *testing.T) {
	hdr := []byte{0x12, 0xaa, 0x96, 0xaa, 0x15, 0x5f, 0x0f, 0x0f}
	frame := testFrame(60)
	b := buildGRE(0x1000, 0x88be, 0, 0xfeedf00d, hdr, frame)
	var p Packet
	if err := Decode(b, &p); err != nil {
		t.Fatal(err)
	}
	want := Packet{
		Type: TypeII, GREFlags: 0x1000, Proto: 0x88be, HasSeq: true, Seq: 0xfeedf00d,
		Version: 1, VLAN: 0x2aa, COS: 4, Encap: 2, Truncated: true, Session: 0x2aa, Index: 0xf0f0f,
		Offset: 16, Frame: frame,
	}
	if d := samePacket(&want, &p); d != "" {
		t.Fatal(d)
	}
	checkDecoded(t, b, &p, nil)
}

// A Type III header with every field non-zero and the platform subheader.
func TestDecodeTypeIIIFields(t *testing.T) {
	hdr := []byte{
		0x21, 0x23, 0xaf, 0xff, // Ver 2, VLAN 0x123, COS 5, BSO 1, T, session 0x3ff
		0xde, 0xad, 0xbe, 0xef, // timestamp
		0xbe, 0xef, 0x82, 0xad, // SGT 0xbeef, P, FT 0, HW 0x2a, D 1, Gra 2, O
		0xff, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, // platform ID 0x3f
	}
	frame := testFrame(14)
	b := buildGRE(0x3000, 0x22eb, 0x01020304, 7, hdr, frame)
	var p Packet
	if err := Decode(b, &p); err != nil {
		t.Fatal(err)
	}
	want := Packet{
		Type: TypeIII, GREFlags: 0x3000, Proto: 0x22eb, HasKey: true, Key: 0x01020304, HasSeq: true, Seq: 7,
		Version: 2, VLAN: 0x123, COS: 5, Encap: 1, Truncated: true, Session: 0x3ff,
		Timestamp: 0xdeadbeef, SGT: 0xbeef, PDU: true, HWID: 0x2a, Direction: 1, Granularity: 2,
		HasPlatform: true, PlatformID: 0x3f, Offset: 12 + 20, Frame: frame,
	}
	if d := samePacket(&want, &p); d != "" {
		t.Fatal(d)
	}
	checkDecoded(t, b, &p, nil)
}

// Every ERSPAN type under every combination of the GRE C, K and S bits that
// the type allows: the header length comes from the flags (spec §1, §4).
func TestDecodeFlagCombinations(t *testing.T) {
	frame := testFrame(20)
	w0 := erspanWord0(1, 100, 3, 1, false, 513)
	type kind struct {
		name   string
		proto  uint16
		seq    bool // GRE S
		hdr    []byte
		typ    Type
		fields func(p *Packet) bool
	}
	kinds := []kind{
		{"I", 0x88be, false, nil, TypeI, func(p *Packet) bool { return p.Session == 0 && p.Version == 0 }},
		{"II", 0x88be, true, typeIIHeader(w0, 0xfff, 12345), TypeII,
			func(p *Packet) bool { return p.Session == 513 && p.VLAN == 100 && p.COS == 3 && p.Index == 12345 }},
		{"III", 0x22eb, false, typeIIIHeader(erspanWord0(2, 7, 1, 0, false, 9), 42, typeIIIWord2(5, true, 0, 3, 1, 1, false), nil), TypeIII,
			func(p *Packet) bool { return p.Session == 9 && p.Timestamp == 42 && !p.HasPlatform }},
		{"III+S", 0x22eb, true, typeIIIHeader(erspanWord0(2, 7, 1, 0, false, 9), 42, typeIIIWord2(5, true, 0, 3, 1, 1, false), nil), TypeIII,
			func(p *Packet) bool { return p.Session == 9 && p.SGT == 5 && p.HWID == 3 }},
		{"III+O", 0x22eb, false, typeIIIHeader(erspanWord0(2, 7, 1, 0, false, 9), 42, typeIIIWord2(5, true, 0, 3, 1, 1, true), []byte{3 << 2, 1, 2, 3, 4, 5, 6, 7}), TypeIII,
			func(p *Packet) bool { return p.HasPlatform && p.PlatformID == 3 }},
		{"III+S+O", 0x22eb, true, typeIIIHeader(erspanWord0(2, 7, 1, 0, false, 9), 42, typeIIIWord2(5, true, 0, 3, 1, 1, true), []byte{0xfc, 0, 0, 0, 0, 0, 0, 0}), TypeIII,
			func(p *Packet) bool { return p.HasPlatform && p.PlatformID == 0x3f }},
	}
	for _, k := range kinds {
		for _, c := range []bool{false, true} {
			for _, key := range []bool{false, true} {
				flags := uint16(0)
				greLen := 4
				if c {
					flags |= GREFlagC
					greLen += 4
				}
				if key {
					flags |= GREFlagK
					greLen += 4
				}
				if k.seq {
					flags |= GREFlagS
					greLen += 4
				}
				t.Run(fmt.Sprintf("%s/C=%v/K=%v", k.name, c, key), func(t *testing.T) {
					b := buildGRE(flags, k.proto, 0xcafe0001, 0x5e9, k.hdr, frame)
					var p Packet
					if err := Decode(b, &p); err != nil {
						t.Fatalf("Decode(%x): %v", b, err)
					}
					if p.Type != k.typ || p.GREFlags != flags || p.Proto != k.proto {
						t.Fatalf("type %v flags %#x proto %#x", p.Type, p.GREFlags, p.Proto)
					}
					if p.HasKey != key || (key && p.Key != 0xcafe0001) || (!key && p.Key != 0) {
						t.Fatalf("key %v %#x", p.HasKey, p.Key)
					}
					if p.HasSeq != k.seq || (k.seq && p.Seq != 0x5e9) || (!k.seq && p.Seq != 0) {
						t.Fatalf("seq %v %#x", p.HasSeq, p.Seq)
					}
					if p.Offset != greLen+len(k.hdr) || !bytes.Equal(p.Frame, frame) {
						t.Fatalf("offset %d, want %d; frame %x", p.Offset, greLen+len(k.hdr), p.Frame)
					}
					if !k.fields(&p) {
						t.Fatalf("fields: %+v", p)
					}
					checkDecoded(t, b, &p, nil)
				})
			}
		}
	}
}

// All 65536 GRE flags words on an otherwise valid packet: version bits give
// ErrGREVersion, then R, s, recursion control and reserved bits ErrGREFlags
// (spec §1, §4); C, K and S alone are accepted (C with a correct checksum).
func TestDecodeAllFlagWords(t *testing.T) {
	frame := testFrame(14)
	hdr := typeIIHeader(erspanWord0(1, 1, 1, 1, false, 1), 0, 1)
	for w := 0; w <= 0xffff; w++ {
		flags := uint16(w)
		b := buildGRE(flags, 0x88be, 1, 2, hdr, frame)
		var want error
		switch {
		case flags&0x0007 != 0:
			want = ErrGREVersion
		case flags&0x4000 != 0, flags&0x0800 != 0, flags&0x0700 != 0, flags&0x00f8 != 0:
			want = ErrGREFlags
		}
		var p Packet
		err := Decode(b, &p)
		if err != want {
			t.Fatalf("flags %#04x: %v, want %v", flags, err, want)
		}
		if p.GREFlags != flags || p.Proto != 0x88be {
			t.Fatalf("flags %#04x: GREFlags %#x Proto %#x", flags, p.GREFlags, p.Proto)
		}
		checkDecoded(t, b, &p, err)
	}
}

// One case per Error value Decode can return, and the order of the checks.
func TestDecodeErrors(t *testing.T) {
	f14 := testFrame(14)
	w0 := erspanWord0(1, 0, 0, 0, false, 5)
	t2 := typeIIHeader(w0, 0, 0)
	t3 := func(ft uint32, o bool) []byte {
		return typeIIIHeader(erspanWord0(2, 0, 0, 0, false, 5), 0, typeIIIWord2(0, false, ft, 0, 0, 0, o), nil)
	}
	badSum := buildGRE(0x8000, 0x88be, 0, 0, f14)
	badSum[len(badSum)-1] ^= 1
	tests := []struct {
		name string
		b    []byte
		want error
		// check, if set, looks at the packet after the error.
		check func(p *Packet) bool
	}{
		{"empty", nil, ErrShort, nil},
		{"1 byte", []byte{0x10}, ErrShort, nil},
		{"3 bytes", []byte{0x10, 0x00, 0x88}, ErrShort, nil},
		{"version 1 (PPTP)", []byte{0x30, 0x01, 0x88, 0x0b, 0, 0, 0, 0}, ErrGREVersion, nil},
		{"version before flags", []byte{0x40, 0x07, 0x88, 0xbe}, ErrGREVersion, nil},
		{"R", buildGRE(0x5000, 0x88be, 0, 1, t2, f14), ErrGREFlags, nil},
		{"s", buildGRE(0x1800, 0x88be, 0, 1, t2, f14), ErrGREFlags, nil},
		{"recursion 5", buildGRE(0x1500, 0x22eb, 0, 1, t3(0, false), f14), ErrGREFlags, nil},
		{"reserved flag", buildGRE(0x1008, 0x88be, 0, 1, t2, f14), ErrGREFlags, nil},
		{"flags before protocol", []byte{0x40, 0x00, 0x65, 0x58}, ErrGREFlags, nil},
		{"TEB", buildGRE(0x2000, 0x6558, 2, 0, f14), ErrNotERSPAN,
			func(p *Packet) bool { return p.GREFlags == 0x2000 && p.Proto == 0x6558 && !p.HasKey }},
		{"IPv4 in GRE", buildGRE(0, 0x0800, 0, 0, make([]byte, 20)), ErrNotERSPAN,
			func(p *Packet) bool { return p.Proto == 0x0800 }},
		{"protocol before length", []byte{0xb0, 0x00, 0x08, 0x00}, ErrNotERSPAN, nil},
		{"C cut", []byte{0x80, 0x00, 0x88, 0xbe, 0x00}, ErrShort, nil},
		{"K cut", []byte{0x20, 0x00, 0x88, 0xbe, 0, 0, 0}, ErrShort, nil},
		{"S cut", []byte{0x10, 0x00, 0x88, 0xbe, 0, 0, 0}, ErrShort, nil},
		{"C+K+S cut in seq", []byte{0xb0, 0x00, 0x88, 0xbe, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, ErrShort, nil},
		{"K cut, key kept out", []byte{0x20, 0x00, 0x88, 0xbe, 1, 2, 3}, ErrShort,
			func(p *Packet) bool { return !p.HasKey && p.Key == 0 }},
		{"II header cut", buildGRE(0x1000, 0x88be, 0, 1, t2[:7]), ErrShort,
			func(p *Packet) bool { return p.Type == TypeII && p.HasSeq && p.Seq == 1 }},
		{"III header cut", buildGRE(0, 0x22eb, 0, 0, t3(0, false)[:11]), ErrShort, nil},
		{"platform missing", buildGRE(0, 0x22eb, 0, 0, t3(0, true)), ErrShort,
			func(p *Packet) bool { return p.HasPlatform && p.Session == 5 }},
		{"platform cut", buildGRE(0, 0x22eb, 0, 0, t3(0, true), make([]byte, 7)), ErrShort, nil},
		{"checksum wrong", badSum, ErrChecksum, nil},
		{"C without its word", buildGRE(0x8000, 0x88be, 0, 0)[:4:4], ErrShort, nil},
		{"checksum before inner length", func() []byte {
			b := buildGRE(0x8000, 0x88be, 0, 0, f14[:5])
			b[4] ^= 0x10
			return b
		}(), ErrChecksum, nil},
		{"frame type 2 (IP)", buildGRE(0x1000, 0x22eb, 0, 77, t3(2, false), f14), ErrFrameType,
			func(p *Packet) bool {
				return p.Type == TypeIII && p.Session == 5 && p.Seq == 77 && p.FrameType == 2 && p.Offset == 20
			}},
		{"frame type 7, platform", buildGRE(0, 0x22eb, 0, 0, t3(7, true), make([]byte, 8), f14[:3]), ErrFrameType,
			func(p *Packet) bool { return p.FrameType == 7 && p.HasPlatform && p.Offset == 24 }},
		{"frame type before inner length", buildGRE(0, 0x22eb, 0, 0, t3(31, false)), ErrFrameType, nil},
		{"inner 13 bytes, I", buildGRE(0, 0x88be, 0, 0, f14[:13]), ErrInnerShort,
			func(p *Packet) bool { return p.Type == TypeI && p.Offset == 4 }},
		{"inner 0 bytes, II", buildGRE(0x3000, 0x88be, 9, 10, t2), ErrInnerShort,
			func(p *Packet) bool {
				return p.Type == TypeII && p.Session == 5 && p.Key == 9 && p.Seq == 10 && p.Offset == 20
			}},
		{"inner 13 bytes, III", buildGRE(0, 0x22eb, 0, 0, t3(0, false), f14[:13]), ErrInnerShort,
			func(p *Packet) bool { return p.Type == TypeIII && p.Session == 5 && p.Offset == 16 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			err := Decode(tt.b, &p)
			if err != tt.want {
				t.Fatalf("Decode(%x) = %v, want %v", tt.b, err, tt.want)
			}
			if tt.check != nil && !tt.check(&p) {
				t.Fatalf("after %v: %+v", err, p)
			}
			checkDecoded(t, tt.b, &p, err)
		})
	}
}

// Every frame type but Ethernet is dropped, with the headers filled in.
func TestDecodeFrameTypes(t *testing.T) {
	for ft := uint32(0); ft < 32; ft++ {
		hdr := typeIIIHeader(erspanWord0(2, 3, 0, 0, false, 44), 1, typeIIIWord2(0, true, ft, 0, 1, 0, false), nil)
		b := buildGRE(0x1000, 0x22eb, 0, 8, hdr, testFrame(64))
		var p Packet
		err := Decode(b, &p)
		want := error(ErrFrameType)
		if ft == 0 {
			want = nil
		}
		if err != want || p.FrameType != uint8(ft) || p.Session != 44 || p.Direction != 1 || p.Seq != 8 {
			t.Fatalf("FT %d: %v, %+v", ft, err, p)
		}
		checkDecoded(t, b, &p, err)
	}
}

// Inner frames of 0..13 bytes are dropped (spec §2, §4), 14 pass.
func TestDecodeInnerLength(t *testing.T) {
	hdrs := map[string][]byte{
		"I":   buildGRE(0, 0x88be, 0, 0),
		"II":  buildGRE(0x1000, 0x88be, 0, 0, typeIIHeader(erspanWord0(1, 0, 0, 0, false, 1), 0, 0)),
		"III": buildGRE(0, 0x22eb, 0, 0, typeIIIHeader(erspanWord0(2, 0, 0, 0, false, 1), 0, 0, nil)),
	}
	for name, h := range hdrs {
		for n := 0; n <= 15; n++ {
			b := append(append([]byte(nil), h...), testFrame(n)...)
			var p Packet
			err := Decode(b, &p)
			want := error(ErrInnerShort)
			if n >= EthernetMinLen {
				want = nil
			}
			if err != want || p.Offset != len(h) {
				t.Fatalf("%s, %d-byte frame: %v, offset %d", name, n, err, p.Offset)
			}
			checkDecoded(t, b, &p, err)
		}
	}
}

// validPackets are well-formed packets whose inner frame is exactly 14
// bytes, so that every proper prefix of them is malformed.
func validPackets() map[string][]byte {
	f := testFrame(14)
	w2 := erspanWord0(1, 10, 2, 2, true, 1023)
	w3 := erspanWord0(2, 10, 2, 2, true, 1023)
	t3 := typeIIIHeader(w3, 99, typeIIIWord2(1, true, 0, 2, 1, 3, false), nil)
	t3o := typeIIIHeader(w3, 99, typeIIIWord2(1, true, 0, 2, 1, 3, true), []byte{8, 1, 2, 3, 4, 5, 6, 7})
	return map[string][]byte{
		"I":           buildGRE(0, 0x88be, 0, 0, f),
		"I+K":         buildGRE(0x2000, 0x88be, 1, 0, f),
		"I+C":         buildGRE(0x8000, 0x88be, 0, 0, f),
		"II":          buildGRE(0x1000, 0x88be, 0, 5, typeIIHeader(w2, 0, 3), f),
		"II+C+K":      buildGRE(0xb000, 0x88be, 4, 5, typeIIHeader(w2, 0, 3), f),
		"III":         buildGRE(0, 0x22eb, 0, 0, t3, f),
		"III+S":       buildGRE(0x1000, 0x22eb, 0, 6, t3, f),
		"III+O":       buildGRE(0, 0x22eb, 0, 0, t3o, f),
		"III+C+K+S+O": buildGRE(0xb000, 0x22eb, 1, 2, t3o, f),
	}
}

// Every prefix of a valid packet fails: ErrShort while the headers its
// flags announce are cut, then ErrInnerShort. With C the checksum is
// verified once the GRE header is complete, before the ERSPAN header is
// read, so from there on ErrChecksum may come first (a prefix can keep a
// valid checksum when only zero bytes were cut).
func TestDecodePrefixes(t *testing.T) {
	for name, b := range validPackets() {
		var full Packet
		if err := Decode(b, &full); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkDecoded(t, b, &full, nil)
		greLen := 4
		for _, f := range []uint16{GREFlagC, GREFlagK, GREFlagS} {
			if full.GREFlags&f != 0 {
				greLen += 4
			}
		}
		for i := 0; i < len(b); i++ {
			// A fresh copy of exactly i bytes, so that a read past
			// the end panics instead of reading b.
			pre := append([]byte(nil), b[:i]...)
			var p Packet
			err := Decode(pre, &p)
			want := error(ErrInnerShort)
			if i < full.Offset {
				want = ErrShort
			}
			if err != want && !(err == ErrChecksum && full.GREFlags&GREFlagC != 0 && i >= greLen) {
				t.Fatalf("%s[:%d]: %v, want %v", name, i, err, want)
			}
			checkDecoded(t, pre, &p, err)
		}
	}
}

// The GRE checksum (RFC 2784, RFC 1071): any changed byte is caught, odd
// lengths are padded with zero, and the two forms of a zero checksum (0x0000
// and 0xffff, equal in one's complement) are both accepted.
func TestDecodeChecksum(t *testing.T) {
	for _, n := range []int{14, 15, 61, 1500} {
		b := buildGRE(0xb000, 0x88be, 3, 4, typeIIHeader(erspanWord0(1, 0, 0, 0, false, 7), 0, 0), testFrame(n))
		var p Packet
		if err := Decode(b, &p); err != nil {
			t.Fatalf("%d-byte frame: %v", n, err)
		}
		checkDecoded(t, b, &p, nil)
		for i := range b {
			for _, x := range []byte{0x01, 0x80, 0xff} {
				if i < 4 {
					continue // flags and protocol: other errors first
				}
				c := append([]byte(nil), b...)
				c[i] ^= x
				if err := Decode(c, &p); err != ErrChecksum {
					t.Fatalf("%d-byte frame, byte %d ^ %#x: %v", n, i, x, err)
				}
			}
		}
	}

	// Make the sum without the checksum 0xffff, so that the checksum is 0,
	// by choosing the last two bytes of the frame.
	b := buildGRE(0x8000, 0x88be, 0, 0, testFrame(16))
	b[len(b)-2], b[len(b)-1] = 0, 0
	binary.BigEndian.PutUint16(b[4:], 0)
	adj := refChecksum(b) // = 0xffff - sum in one's complement
	binary.BigEndian.PutUint16(b[len(b)-2:], adj)
	if refChecksum(b) != 0 {
		t.Fatalf("setup: checksum %#x", refChecksum(b))
	}
	for _, c := range []uint16{0x0000, 0xffff} {
		binary.BigEndian.PutUint16(b[4:], c)
		var p Packet
		if err := Decode(b, &p); err != nil {
			t.Errorf("checksum %#04x: %v", c, err)
		}
	}
}

// onesSum against the plain reference on many lengths and contents.
func TestOnesSum(t *testing.T) {
	b := make([]byte, 300)
	for i := range b {
		b[i] = byte(i*151 + i>>3)
	}
	for n := 0; n <= len(b); n++ {
		for _, fill := range []byte{0x00, 0xff} {
			c := append([]byte(nil), b[:n]...)
			if fill == 0xff {
				for i := range c {
					c[i] = 0xff
				}
			}
			got, want := onesSum(c), ^refChecksum(c)
			if got != want && !(got == 0xffff && want == 0) && !(got == 0 && want == 0xffff) {
				t.Fatalf("len %d fill %#x: %#x, want %#x", n, fill, got, want)
			}
		}
	}
}

// Decode resets *p: nothing of an earlier packet survives, on any result.
func TestDecodeResets(t *testing.T) {
	junk := Packet{
		Type: 9, GREFlags: 0xffff, Proto: 1, HasKey: true, Key: 1, HasSeq: true, Seq: 1,
		Version: 7, Session: 1, VLAN: 1, COS: 1, Encap: 1, Truncated: true, Index: 1,
		Timestamp: 1, SGT: 1, PDU: true, FrameType: 1, HWID: 1, Direction: 1, Granularity: 1,
		HasPlatform: true, PlatformID: 1, Offset: 99, Frame: []byte{1},
	}
	inputs := [][]byte{nil, {0, 0, 0x65, 0x58}, {0x10, 0, 0x88, 0xbe, 0}}
	for _, b := range validPackets() {
		inputs = append(inputs, b, b[:len(b)-1])
	}
	for _, b := range inputs {
		var clean Packet
		errClean := Decode(b, &clean)
		dirty := junk
		errDirty := Decode(b, &dirty)
		if errClean != errDirty {
			t.Fatalf("%x: %v vs %v", b, errClean, errDirty)
		}
		if d := samePacket(&clean, &dirty); d != "" {
			t.Fatalf("%x: %s", b, d)
		}
	}
}

func TestErrorNames(t *testing.T) {
	seen := map[string]bool{}
	for e := Error(1); e < NumErrors; e++ {
		n := e.Name()
		if n == "unknown" || seen[n] || e.Error() != "erspan: "+n {
			t.Errorf("Error %d: name %q, %q", e, n, e.Error())
		}
		seen[n] = true
	}
	if Error(0).Name() != "unknown" || NumErrors.Name() != "unknown" || Error(255).Name() != "unknown" {
		t.Error("out-of-range Error has a name")
	}
}

func TestTypeString(t *testing.T) {
	for typ, s := range map[Type]string{TypeI: "I", TypeII: "II", TypeIII: "III", 0: "unknown", 4: "unknown"} {
		if typ.String() != s {
			t.Errorf("Type(%d).String() = %q", typ, typ.String())
		}
	}
}

// benchPackets are realistic packets: a 64-byte inner frame behind the
// headers Type I, II and III senders use.
func benchPackets() (typeI, typeII, typeIII []byte) {
	f := testFrame(64)
	typeI = buildGRE(0, 0x88be, 0, 0, f)
	typeII = buildGRE(0x1000, 0x88be, 0, 1234, typeIIHeader(erspanWord0(1, 10, 3, 0, false, 5), 0, 0), f)
	typeIII = buildGRE(0x1000, 0x22eb, 0, 1234, typeIIIHeader(erspanWord0(2, 10, 3, 0, false, 5), 99, typeIIIWord2(0, true, 0, 3, 1, 1, false), nil), f)
	return
}

// The receive path decodes every packet: it must not allocate, on success
// or on any error (an Error in an error interface does not allocate).
func TestDecodeAllocs(t *testing.T) {
	i, ii, iii := benchPackets()
	inputs := map[string]struct {
		b    []byte
		want error // the path measured: checked, so it cannot change unseen
	}{
		"I":        {i, nil},
		"II":       {ii, nil},
		"III":      {iii, nil},
		"checksum": {validPackets()["II+C+K"], nil},
		"short":    {ii[:10], ErrShort},
		"TEB":      {buildGRE(0x2000, 0x6558, 1, 0, testFrame(14)), ErrNotERSPAN},
		"FT":       {buildGRE(0, 0x22eb, 0, 0, typeIIIHeader(0, 0, typeIIIWord2(0, false, 2, 0, 0, 0, false), nil), testFrame(14)), ErrFrameType},
	}
	for name, in := range inputs {
		var p Packet
		var err error
		if a := testing.AllocsPerRun(1000, func() { err = Decode(in.b, &p) }); a != 0 {
			t.Errorf("Decode %s: %v allocations", name, a)
		}
		if err != in.want {
			t.Errorf("Decode %s: %v, want %v: the test no longer measures the path it names", name, err, in.want)
		}
	}
}

func benchmarkDecode(b *testing.B, pkt []byte) {
	var p Packet
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if err := Decode(pkt, &p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeTypeI(b *testing.B) {
	i, _, _ := benchPackets()
	benchmarkDecode(b, i)
}

func BenchmarkDecodeTypeII(b *testing.B) {
	_, ii, _ := benchPackets()
	benchmarkDecode(b, ii)
}

func BenchmarkDecodeTypeIII(b *testing.B) {
	_, _, iii := benchPackets()
	benchmarkDecode(b, iii)
}

// The checksum is the only per-byte cost of Decode: a 1500-byte frame.
func BenchmarkDecodeChecksum1500(b *testing.B) {
	benchmarkDecode(b, buildGRE(0x9000, 0x88be, 0, 1, typeIIHeader(erspanWord0(1, 0, 0, 0, false, 5), 0, 0), testFrame(1500)))
}
