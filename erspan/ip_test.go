package erspan

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// ipv4 builds an IPv4 header of ihl 32-bit words (options filled with NOPs)
// carrying payload, with protocol GRE; total is the Total Length field, or
// the real length when 0.
func ipv4(ihl int, total int, payload []byte) []byte {
	b := make([]byte, ihl*4, ihl*4+len(payload))
	b[0] = 0x40 | byte(ihl&0xf)
	if total == 0 {
		total = ihl*4 + len(payload)
	}
	binary.BigEndian.PutUint16(b[2:], uint16(total))
	b[8], b[9] = 64, IPProtoGRE
	copy(b[12:], []byte{192, 0, 2, 1, 198, 51, 100, 7})
	for i := 20; i < len(b); i++ {
		b[i] = 1 // NOP option
	}
	return append(b, payload...)
}

// set returns b with b[i] = v.
func set(b []byte, i int, v byte) []byte {
	b[i] = v
	return b
}

func TestParseIPv4(t *testing.T) {
	gre := buildGRE(0x1000, 0x88be, 0, 1, typeIIHeader(erspanWord0(1, 0, 0, 0, false, 5), 0, 0), testFrame(20))
	src, dst := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.7")
	for ihl := 5; ihl <= 15; ihl++ {
		b := ipv4(ihl, 0, gre)
		s, d, payload, err := ParseIPv4(b)
		if err != nil || s != src || d != dst || !bytes.Equal(payload, gre) || &payload[0] != &b[ihl*4] {
			t.Fatalf("IHL %d: %v %v %v %x", ihl, s, d, err, payload)
		}
		// Bytes past Total Length (Ethernet padding, say) are cut.
		padded := append(append([]byte(nil), b...), 0, 0, 0, 0)
		if _, _, payload, err := ParseIPv4(padded); err != nil || !bytes.Equal(payload, gre) {
			t.Fatalf("IHL %d, padded: %v, %d bytes", ihl, err, len(payload))
		}
	}
	// A header and nothing else is fine: an empty payload.
	if _, _, payload, err := ParseIPv4(ipv4(5, 0, nil)); err != nil || len(payload) != 0 {
		t.Fatalf("empty payload: %v, %x", err, payload)
	}

	bad := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrIPHeader},
		{"19 bytes", ipv4(5, 0, nil)[:19], ErrIPHeader},
		{"IPv6", append([]byte{0x60}, make([]byte, 39)...), ErrIPHeader},
		{"version 0", set(ipv4(5, 0, gre), 0, 0x05), ErrIPHeader},
		{"IHL 4", set(ipv4(5, 0, gre), 0, 0x44), ErrIPHeader},
		{"IHL 0", set(ipv4(5, 0, gre), 0, 0x40), ErrIPHeader},
		{"options cut", ipv4(15, 60, nil)[:40], ErrIPHeader},
		{"total below IHL", ipv4(6, 20, gre), ErrIPHeader},
		{"total 0", set(set(ipv4(5, 0, gre), 2, 0), 3, 0), ErrIPHeader},
		{"read cut short", ipv4(5, 0, gre)[:40], ErrShort},
		{"total one too many", ipv4(5, 20+len(gre)+1, gre), ErrShort},
	}
	for _, tt := range bad {
		s, d, payload, err := ParseIPv4(tt.b)
		if err != tt.want || payload != nil || s.IsValid() || d.IsValid() {
			t.Errorf("%s: %v %v %v %x, want %v", tt.name, s, d, err, payload, tt.want)
		}
	}
}

func TestParseIPv4Allocs(t *testing.T) {
	b := ipv4(6, 0, testFrame(40))
	if a := testing.AllocsPerRun(1000, func() { _, _, _, _ = ParseIPv4(b) }); a != 0 {
		t.Errorf("ParseIPv4: %v allocations", a)
	}
	if a := testing.AllocsPerRun(1000, func() { _, _, _, _ = ParseIPv4(b[:10]) }); a != 0 {
		t.Errorf("ParseIPv4 error: %v allocations", a)
	}
	// Sensor mode's path (a packet socket): the checksum verified.
	good := append([]byte(nil), b...)
	binary.BigEndian.PutUint16(good[10:], Checksum(good[:24]))
	if _, _, _, err := ParseIPv4Checked(good); err != nil {
		t.Fatalf("ParseIPv4Checked of a good header: %v", err)
	}
	bad := append([]byte(nil), good...)
	bad[10] ^= 0xff
	if _, _, _, err := ParseIPv4Checked(bad); err != ErrIPHeader {
		t.Fatalf("ParseIPv4Checked of a bad checksum: %v, want ErrIPHeader", err)
	}
	for _, c := range []struct {
		name string
		b    []byte
	}{{"good", good}, {"bad checksum", bad}} {
		if a := testing.AllocsPerRun(1000, func() { _, _, _, _ = ParseIPv4Checked(c.b) }); a != 0 {
			t.Errorf("ParseIPv4Checked, %s: %v allocations", c.name, a)
		}
	}
}

// FuzzParseIPv4 checks ParseIPv4 against the rules of RFC 791 written out
// again: it never panics, fails with ErrIPHeader or ErrShort only, and on
// success returns the addresses at bytes 12-19 and b[IHL*4:TotalLength],
// aliasing b; and that ParseIPv4Checked returns the same but for a header
// whose checksum is wrong, which it alone refuses (ErrIPHeader).
func FuzzParseIPv4(f *testing.F) {
	f.Add(ipv4(5, 0, testFrame(30)))
	f.Add(ipv4(15, 0, nil))
	f.Add(ipv4(5, 1500, testFrame(30)))
	f.Add([]byte{0x45, 0, 0, 20})
	for _, c := range captureFrames(f) {
		if c.ipv4 != nil {
			f.Add(c.ipv4)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		src, dst, payload, err := ParseIPv4(b)
		checkChecked(t, b, payload, err)
		if err == nil {
			// Random bytes almost never sum right: fix the checksum
			// up, so that the accepting side is fuzzed too.
			c := append([]byte(nil), b...)
			ihl := int(c[0]&0xf) * 4
			c[10], c[11] = 0, 0
			sum := Checksum(c[:ihl])
			c[10], c[11] = byte(sum>>8), byte(sum)
			_, _, cp, _ := ParseIPv4(c)
			checkChecked(t, c, cp, nil)
		}
		ok := len(b) >= 20 && b[0]>>4 == 4
		ihl := 0
		total := 0
		if ok {
			ihl = int(b[0]&0xf) * 4
			total = int(b[2])<<8 | int(b[3])
			ok = ihl >= 20 && ihl <= len(b) && total >= ihl
		}
		switch {
		case !ok:
			if err != ErrIPHeader {
				t.Fatalf("%x: %v, want %v", b, err, ErrIPHeader)
			}
		case total > len(b):
			if err != ErrShort {
				t.Fatalf("%x: %v, want %v", b, err, ErrShort)
			}
		default:
			if err != nil {
				t.Fatalf("%x: %v", b, err)
			}
			if src.As4() != [4]byte(b[12:16]) || dst.As4() != [4]byte(b[16:20]) || !src.Is4() || !dst.Is4() {
				t.Fatalf("%x: addresses %v %v", b, src, dst)
			}
			if len(payload) != total-ihl || cap(payload) != cap(b)-ihl {
				t.Fatalf("%x: payload of %d bytes (cap %d), want %d", b, len(payload), cap(payload), total-ihl)
			}
			if len(payload) > 0 && &payload[0] != &b[ihl] {
				t.Fatalf("%x: payload does not alias b[%d:]", b, ihl)
			}
			return
		}
		if payload != nil || src.IsValid() || dst.IsValid() {
			t.Fatalf("%x: failed with %v but returned %v %v %x", b, err, src, dst, payload)
		}
	})
}

func TestParseIPv4Checked(t *testing.T) {
	gre := []byte{0x10, 0x00, 0x88, 0xbe, 0, 0, 0, 1}
	for _, ihl := range []int{5, 6} {
		b := ipv4(ihl, 0, gre)
		binary.BigEndian.PutUint16(b[10:], Checksum(b[:ihl*4]))
		s, d, payload, err := ParseIPv4Checked(b)
		if err != nil || s != netip.MustParseAddr("192.0.2.1") || d != netip.MustParseAddr("198.51.100.7") || !bytes.Equal(payload, gre) {
			t.Errorf("IHL %d, right checksum: %v %v % x %v", ihl, s, d, payload, err)
		}
		b[ihl*4-1] ^= 0x40 // the last header byte: an option with IHL 6
		if _, _, payload, err := ParseIPv4Checked(b); err != ErrIPHeader || payload != nil {
			t.Errorf("IHL %d, wrong checksum: % x, %v; want ErrIPHeader", ihl, payload, err)
		}
		if _, _, _, err := ParseIPv4(b); err != nil {
			t.Errorf("IHL %d: ParseIPv4 checks the checksum: %v", ihl, err)
		}
	}
	if _, _, _, err := ParseIPv4Checked([]byte{0x45}); err != ErrIPHeader {
		t.Errorf("short: %v, want ErrIPHeader", err)
	}
}

// checkChecked checks ParseIPv4Checked(b) against ParseIPv4(b), which gave
// payload and err.
func checkChecked(t *testing.T, b, payload []byte, err error) {
	t.Helper()
	_, _, cp, cerr := ParseIPv4Checked(b)
	switch {
	case err != nil:
		if cerr != err {
			t.Fatalf("%x: ParseIPv4 %v, ParseIPv4Checked %v", b, err, cerr)
		}
	case checksumOK(b[:int(b[0]&0xf)*4]):
		if cerr != nil || len(cp) != len(payload) {
			t.Fatalf("%x: right checksum, ParseIPv4Checked %v (%d bytes, want %d)", b, cerr, len(cp), len(payload))
		}
	default:
		if cerr != ErrIPHeader || cp != nil {
			t.Fatalf("%x: wrong checksum, ParseIPv4Checked %v, want ErrIPHeader", b, cerr)
		}
	}
}
