package erspan

import (
	"bytes"
	"testing"
)

func TestEncode(t *testing.T) {
	tests := []struct {
		name string
		p    Packet
		want []byte
	}{
		{
			// What the transmit path sends (spec §2 Transmit): GRE S,
			// 0x88BE, the sequence number, Ver 1, COS, session, the
			// rest zero.
			"II transmit",
			Packet{Type: TypeII, HasSeq: true, Seq: 0x01020304, Session: 1023, COS: 3},
			[]byte{0x10, 0x00, 0x88, 0xbe, 1, 2, 3, 4, 0x10, 0x00, 0x63, 0xff, 0, 0, 0, 0},
		},
		{
			// The spec §1 vector; Reserved (0x155) is written as zero.
			"II spec vector",
			Packet{Type: TypeII, Seq: 9, VLAN: 0x2aa, COS: 4, Encap: 2, Truncated: true, Session: 0x2aa, Index: 0xf0f0f},
			[]byte{0x10, 0x00, 0x88, 0xbe, 0, 0, 0, 9, 0x12, 0xaa, 0x96, 0xaa, 0x00, 0x0f, 0x0f, 0x0f},
		},
		{
			"II key, Version and GRE fields ignored",
			Packet{Type: TypeII, HasKey: true, Key: 0xa1b2c3d4, Version: 15, GREFlags: 0xffff, Proto: 0x6558, Session: 1},
			[]byte{0x30, 0x00, 0x88, 0xbe, 0xa1, 0xb2, 0xc3, 0xd4, 0, 0, 0, 0, 0x10, 0x00, 0x00, 0x01, 0, 0, 0, 0},
		},
		{
			"II fields masked",
			Packet{Type: TypeII, HasSeq: true, VLAN: 0xffff, COS: 0xff, Encap: 0xff, Session: 0xffff, Index: 0xffffffff},
			[]byte{0x10, 0x00, 0x88, 0xbe, 0, 0, 0, 0, 0x1f, 0xff, 0xfb, 0xff, 0x00, 0x0f, 0xff, 0xff},
		},
		{
			"I",
			Packet{Type: TypeI, Session: 5, VLAN: 5},
			[]byte{0x00, 0x00, 0x88, 0xbe},
		},
		{
			// Type I has no sequence number: with S it would be Type II.
			"I with key, HasSeq ignored",
			Packet{Type: TypeI, HasKey: true, Key: 1, HasSeq: true, Seq: 2},
			[]byte{0x20, 0x00, 0x88, 0xbe, 0, 0, 0, 1},
		},
		{
			"III without S",
			Packet{Type: TypeIII, VLAN: 0x123, COS: 5, Encap: 1, Truncated: true, Session: 0x3ff,
				Timestamp: 0xdeadbeef, SGT: 0xbeef, PDU: true, HWID: 0x2a, Direction: 1, Granularity: 2},
			[]byte{0x00, 0x00, 0x22, 0xeb, 0x21, 0x23, 0xaf, 0xff, 0xde, 0xad, 0xbe, 0xef, 0xbe, 0xef, 0x82, 0xac},
		},
		{
			"III with S and platform",
			Packet{Type: TypeIII, HasSeq: true, Seq: 0x0a0b0c0d, Session: 1, FrameType: 7, HasPlatform: true, PlatformID: 3},
			[]byte{0x10, 0x00, 0x22, 0xeb, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x00, 0x00, 0x01, 0, 0, 0, 0,
				0x00, 0x00, 0x1c, 0x01, 0x0c, 0, 0, 0, 0, 0, 0, 0},
		},
		{
			"III fields masked",
			Packet{Type: TypeIII, FrameType: 0xff, HWID: 0xff, Direction: 0xff, Granularity: 0xff, HasPlatform: true, PlatformID: 0xff},
			[]byte{0x00, 0x00, 0x22, 0xeb, 0x20, 0x00, 0x00, 0x00, 0, 0, 0, 0,
				0x00, 0x00, 0x7f, 0xff, 0xfc, 0, 0, 0, 0, 0, 0, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := HeaderLen(&tt.p); n != len(tt.want) {
				t.Fatalf("HeaderLen = %d, want %d", n, len(tt.want))
			}
			// Dirty buffer, one byte too long: every header byte is
			// written, and nothing after it.
			b := bytes.Repeat([]byte{0x55}, len(tt.want)+1)
			n, err := Encode(b, &tt.p)
			if err != nil || n != len(tt.want) {
				t.Fatalf("Encode = %d, %v", n, err)
			}
			if !bytes.Equal(b[:n], tt.want) || b[n] != 0x55 {
				t.Fatalf("Encode wrote\n%x, want\n%x", b, tt.want)
			}
			// What Encode writes decodes to p, masked.
			pkt := append(b[:n:n], testFrame(14)...)
			var q Packet
			err = Decode(pkt, &q)
			if err != nil && !(err == ErrFrameType && tt.p.FrameType != 0) {
				t.Fatalf("Decode: %v", err)
			}
			wantSession := tt.p.Session & 0x3ff
			if tt.p.Type == TypeI {
				wantSession = 0 // Type I has no ERSPAN header
			}
			if q.Type != tt.p.Type || q.Session != wantSession || q.PlatformID != tt.p.PlatformID&0x3f {
				t.Fatalf("decoded %+v", q)
			}
			checkDecoded(t, pkt, &q, err)
		})
	}
}

func TestEncodeShortBuffer(t *testing.T) {
	for _, p := range []Packet{
		{Type: TypeI}, {Type: TypeI, HasKey: true}, {Type: TypeII}, {Type: TypeII, HasKey: true},
		{Type: TypeIII}, {Type: TypeIII, HasSeq: true, HasKey: true, HasPlatform: true},
	} {
		need := HeaderLen(&p)
		for n := 0; n < need; n++ {
			b := bytes.Repeat([]byte{0x55}, need)
			got, err := Encode(b[:n], &p)
			if err != ErrShort || got != 0 {
				t.Fatalf("%+v into %d bytes: %d, %v", p, n, got, err)
			}
			if !bytes.Equal(b, bytes.Repeat([]byte{0x55}, need)) {
				t.Fatalf("%+v into %d bytes: wrote %x", p, n, b)
			}
		}
	}
}

func TestEncodeBadType(t *testing.T) {
	for _, typ := range []Type{0, 4, 255} {
		p := Packet{Type: typ, HasKey: true}
		if HeaderLen(&p) != 0 {
			t.Errorf("Type %d: HeaderLen %d", typ, HeaderLen(&p))
		}
		if n, err := Encode(make([]byte, 64), &p); n != 0 || err != ErrNotERSPAN {
			t.Errorf("Type %d: Encode = %d, %v", typ, n, err)
		}
	}
}

func TestEncapTypeIILen(t *testing.T) {
	if n := HeaderLen(&Packet{Type: TypeII}); n != EncapTypeIILen {
		t.Fatalf("HeaderLen(Type II) = %d, EncapTypeIILen = %d", n, EncapTypeIILen)
	}
}

func TestEncodeAllocs(t *testing.T) {
	b := make([]byte, 64)
	for _, p := range []Packet{
		{Type: TypeI},
		{Type: TypeII, HasSeq: true, Seq: 1, Session: 5, COS: 3},
		{Type: TypeIII, HasSeq: true, HasKey: true, HasPlatform: true, Session: 5},
	} {
		if a := testing.AllocsPerRun(1000, func() { _, _ = Encode(b, &p) }); a != 0 {
			t.Errorf("Encode %v: %v allocations", p.Type, a)
		}
		if a := testing.AllocsPerRun(1000, func() { _, _ = Encode(b[:3], &p) }); a != 0 {
			t.Errorf("Encode %v, short buffer: %v allocations", p.Type, a)
		}
	}
}

func benchmarkEncode(b *testing.B, bufLen int, p Packet) {
	buf := make([]byte, bufLen)
	b.ReportAllocs()
	for b.Loop() {
		p.Seq++
		if _, err := Encode(buf, &p); err != nil {
			b.Fatal(err)
		}
	}
}

// The transmit hot path: one Type II header per frame sent.
func BenchmarkEncodeTypeII(b *testing.B) {
	benchmarkEncode(b, EncapTypeIILen, Packet{Type: TypeII, HasSeq: true, Session: 5, COS: 3})
}

func BenchmarkEncodeTypeIII(b *testing.B) {
	benchmarkEncode(b, 64, Packet{Type: TypeIII, HasSeq: true, Session: 5, Timestamp: 9, PDU: true})
}

// Checksum writes what checksumOK accepts (RFC 1071), for odd lengths too.
func TestChecksum(t *testing.T) {
	for _, n := range []int{20, 21, 64, 1501} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7 + n)
		}
		b[10], b[11] = 0, 0
		c := Checksum(b)
		b[10], b[11] = byte(c>>8), byte(c)
		if !checksumOK(b) {
			t.Errorf("%d bytes: checksum %#04x does not verify", n, c)
		}
	}
	// The IPv4 header example of RFC 1071 style: a known header.
	h := []byte{0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7}
	if c := Checksum(h); c != 0xb861 {
		t.Errorf("known header: %#04x, want 0xb861", c)
	}
}
