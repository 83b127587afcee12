package erspan

import "testing"

// FuzzDecode checks, on any input, that Decode never panics and returns an
// Error; that on success Frame is b[Offset:], at least 14 bytes; and that
// the round-trip property of Encode holds (checkDecoded): Encode writes
// HeaderLen bytes equal to the header Decode read, up to the fields the
// property excludes, and decoding them again, followed by Frame, gives the
// same Packet up to Version, the C bit and Offset. Decode into a dirty
// Packet gives the same result as into a zero one, and with the GRE
// checksum made right, a packet with C is never refused for it.
//
// Seeds: the GRE payload of every packet in testdata/pcaps and the
// hand-made packets of the unit tests.
func FuzzDecode(f *testing.F) {
	for _, c := range captureFrames(f) {
		if c.gre != nil {
			f.Add(c.gre)
		}
	}
	for _, b := range validPackets() {
		f.Add(b)
	}
	i, ii, iii := benchPackets()
	f.Add(i)
	f.Add(ii)
	f.Add(iii)
	f.Add([]byte{})
	f.Add([]byte{0x10, 0x00, 0x88, 0xbe})
	f.Add([]byte{0x80, 0x00, 0x22, 0xeb, 0xff, 0xff})
	f.Add(buildGRE(0xb000, 0x22eb, 1, 2, typeIIIHeader(erspanWord0(2, 1, 1, 1, true, 1), 1, typeIIIWord2(1, true, 7, 1, 1, 1, true), make([]byte, 8)), testFrame(14)))

	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		err := Decode(b, &p)
		checkDecoded(t, b, &p, err)

		dirty := Packet{Type: 7, GREFlags: 0xffff, HasKey: true, Key: 1, Session: 9, HasPlatform: true, Offset: 3, Frame: b}
		if derr := Decode(b, &dirty); derr != err {
			t.Fatalf("into a dirty Packet: %v, into a zero one: %v", derr, err)
		}
		if d := samePacket(&p, &dirty); d != "" {
			t.Fatalf("into a dirty Packet: %s", d)
		}

		// Random bytes almost never carry a right GRE checksum: fix it
		// up, so that packets with C reach the rest of Decode too.
		if len(b) >= 8 && b[0]&0x80 != 0 {
			c := append([]byte(nil), b...)
			c[4], c[5] = 0, 0
			sum := refChecksum(c)
			c[4], c[5] = byte(sum>>8), byte(sum)
			var q Packet
			err := Decode(c, &q)
			if err == ErrChecksum {
				t.Fatalf("%x: checksum %#04x refused", c, sum)
			}
			checkDecoded(t, c, &q, err)
		}
	})
}
