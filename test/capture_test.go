package test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/erspan-linux/erspan/erspan"
)

// captureDir holds the public ERSPAN captures (and their PROVENANCE.txt),
// shared with the erspan package's tests.
const captureDir = "../erspan/testdata/pcaps"

// capPacket is the GRE payload of one packet of a capture.
type capPacket struct {
	index int        // frame number in the file, from 1
	src   netip.Addr // original outer source
	gre   []byte     // IP protocol 47 payload, as far as it was captured
}

// readCapture returns the GRE packets of a capture in captureDir, in file
// order. Outer IP fragments are left out: only reassembled packets reach a
// raw socket, and none of the ERSPAN captures has any.
func readCapture(t *testing.T, name string) []capPacket {
	t.Helper()
	f, err := os.Open(filepath.Join(captureDir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var out []capPacket
	for i := 1; ; i++ {
		data, _, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s frame %d: %v", name, i, err)
		}
		var ip []byte
		switch lt := r.LinkType(); lt {
		case layers.LinkTypeEthernet:
			ip = skipEthernet(data)
		case layers.LinkTypeRaw, 12, 14: // DLT_RAW under its numbers
			ip = data
		case layers.LinkTypeLinuxSLL:
			if len(data) >= 16 && binary.BigEndian.Uint16(data[14:]) != 0 {
				ip = data[16:]
			}
		default:
			t.Fatalf("%s: link type %v not handled", name, lt)
		}
		if src, gre, ok := grePayload(ip); ok {
			out = append(out, capPacket{index: i, src: src, gre: gre})
		}
	}
}

// skipEthernet returns what follows the Ethernet header and any 802.1Q or
// 802.1ad tags when it is IPv4 or IPv6, else nil.
func skipEthernet(b []byte) []byte {
	if len(b) < 14 {
		return nil
	}
	et, off := binary.BigEndian.Uint16(b[12:]), 14
	for (et == 0x8100 || et == 0x88a8) && len(b) >= off+4 {
		et, off = binary.BigEndian.Uint16(b[off+2:]), off+4
	}
	if et != 0x0800 && et != 0x86dd {
		return nil
	}
	return b[off:]
}

// grePayload returns the outer source and the GRE payload of an IPv4 or
// IPv6 packet, cut to the IP length (Ethernet pads short frames) and to
// what was captured.
func grePayload(b []byte) (netip.Addr, []byte, bool) {
	if len(b) < 1 {
		return netip.Addr{}, nil, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return netip.Addr{}, nil, false
		}
		ihl := int(b[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(b[2:]))
		if b[9] != 47 || ihl < 20 || len(b) < ihl || total < ihl {
			return netip.Addr{}, nil, false
		}
		if binary.BigEndian.Uint16(b[6:])&0x3fff != 0 { // MF or offset
			return netip.Addr{}, nil, false
		}
		return netip.AddrFrom4([4]byte(b[12:16])), b[ihl:min(total, len(b))], true
	case 6:
		if len(b) < 40 {
			return netip.Addr{}, nil, false
		}
		end := min(40+int(binary.BigEndian.Uint16(b[4:])), len(b))
		next, off := b[6], 40
		for {
			switch next {
			case 47:
				return netip.AddrFrom16([16]byte(b[8:24])), b[off:end], true
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if off+2 > end {
					return netip.Addr{}, nil, false
				}
				next, off = b[off], off+(int(b[off+1])+1)*8
			default: // a fragment, or not GRE
				return netip.Addr{}, nil, false
			}
			if off > end {
				return netip.Addr{}, nil, false
			}
		}
	}
	return netip.Addr{}, nil, false
}

// verdict is what a receiver must do with a GRE payload.
type verdict int

const (
	deliver       verdict = iota
	dropFrameType         // Type III with FT != 0: counted on the interface
	dropOther             // malformed, inner frame too short, or not ERSPAN
)

// expectation is a GRE payload as this test reads spec/erspan.md, written
// independently of package erspan's decoder.
type expectation struct {
	verdict   verdict
	erspanTyp int // 1, 2 or 3; 0 when not ERSPAN
	session   int // -1 for Type I
	truncated bool
	frame     []byte
}

func classify(b []byte) expectation {
	x := expectation{verdict: dropOther, session: -1}
	if len(b) < 4 {
		return x
	}
	flags, proto := binary.BigEndian.Uint16(b), binary.BigEndian.Uint16(b[2:])
	// Version (bits 13-15), R, s, recursion and reserved bits must be 0.
	if (proto != 0x88be && proto != 0x22eb) || flags&0x4fff != 0 {
		return x
	}
	off := 4
	for _, bit := range []uint16{0x8000, 0x2000, 0x1000} { // C, K, S words
		if flags&bit != 0 {
			off += 4
		}
	}
	// The checksum is package erspan's, the one piece shared with the
	// decoder: TestMonitor's echo replies show the kernel agrees with it.
	if len(b) < off || (flags&0x8000 != 0 && erspan.Checksum(b) != 0) {
		return x
	}
	switch {
	case proto == 0x88be && flags&0x1000 == 0:
		x.erspanTyp = 1
	case proto == 0x88be:
		if len(b) < off+8 {
			return x
		}
		w0 := binary.BigEndian.Uint32(b[off:])
		x.erspanTyp, x.session, x.truncated = 2, int(w0&0x3ff), w0&0x400 != 0
		off += 8
	default:
		if len(b) < off+12 {
			return x
		}
		w0, w2 := binary.BigEndian.Uint32(b[off:]), binary.BigEndian.Uint32(b[off+8:])
		x.erspanTyp, x.session, x.truncated = 3, int(w0&0x3ff), w0&0x400 != 0
		off += 12
		if w2&1 != 0 { // O: platform subheader
			off += 8
			if len(b) < off {
				return x
			}
		}
		if (w2>>10)&0x1f != 0 {
			x.verdict = dropFrameType
			return x
		}
	}
	if len(b)-off < 14 {
		return x
	}
	x.verdict, x.frame = deliver, b[off:]
	return x
}

// captureFrames is how many frames each capture must deliver, from the
// decode notes of the captures (tshark), so that a classifier bug cannot
// make the test expect nothing.
var captureFrames = map[string]int{
	"arkime__gre-erspan-vxlan.pcap":                 7,
	"suricata-verify__decode-erspan-typeI-02.pcap":  42,
	"suricata-verify__decode-erspan-typeII-01.pcap": 6,
	"tcpdump__erspan-type-i-1.pcap":                 2,
	"tcpdump__erspan-type-i-2.pcap":                 2,
	"tcpdump__erspan-type-i-3.pcap":                 1,
	"tcpdump__erspan-type-i-4.pcap":                 88,
	"tcpdump__erspan-type-ii-1.pcap":                1,
	"tcpdump__erspan-type-ii-2.pcap":                16,
	"tcpdump__erspan-type-ii-3.pcap":                108,
	"tcpdump__erspan-type-iii-ft-0.pcap":            9,
	"tcpdump__erspan-type-iii-ft-7.pcap":            0, // FT=7: dropped
	"tcpdump__erspan-type-iii-pb-1.pcap":            0, // fuzzed flags
	"zeek__erspan.pcap":                             0, // GRE-TEB, not ERSPAN
	"zeek__erspanI.pcap":                            10,
	"zeek__erspanII.pcap":                           4,
	"zeek__erspanIII.pcap":                          2,
	"zeek__gre-erspan3-dot1q.pcap":                  2,
}

// checkCaptureFrames fails the test unless the classifier expects of
// capture name as many frames as captureFrames says.
func checkCaptureFrames(t *testing.T, name string, delivered int) {
	t.Helper()
	want, known := captureFrames[name]
	if !known {
		t.Errorf("%s: no expected frame count in captureFrames; add one", name)
	} else if delivered != want {
		t.Errorf("%s: the test expects %d frames, the capture notes say %d", name, delivered, want)
	}
}

// TestCaptures re-sends the GRE payload of every packet of the public
// captures (Types I, II and III; two switches with one session; a switch
// whose sequence is always 0; Type III without GRE sequence and with the
// platform subheader; Type III FT=7; GRE that is not ERSPAN) from the
// switch namespace, over IPv4 and over IPv6, to a catch-all and a session
// 101 collector. Every ERSPAN frame must come out of the right TAP byte for
// byte and in order, FT=7 frames must be counted and dropped, and nothing
// else may come out. The captures' own outer addresses are never used: each
// original source maps to one of the switch's two addresses.
func TestCaptures(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	names, err := filepath.Glob(filepath.Join(captureDir, "*.pcap"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no captures in %s: %v", captureDir, err)
	}
	sort.Strings(names)
	eachFamily(t, func(t *testing.T, e *env, fam family) {
		L := fam.local
		e.d.mustCtl("create", "erspan0", "tunneladdr", L.String(), "up")
		e.d.mustCtl("create", "erspan1", "tunneladdr", L.String(), "vnetid", "101", "up")
		all, s101 := e.reader("erspan0"), e.reader("erspan1")
		dl := e.deliveries(all, s101)
		frameType := map[*packetReader]uint64{}
		truncated := map[*packetReader]uint64{}
		var summary strings.Builder
		sent := 0
		for _, path := range names {
			name := filepath.Base(path)
			pkts := readCapture(t, name)
			sources := map[netip.Addr]netip.Addr{}
			delivered, ft := 0, 0
			for _, p := range pkts {
				src, ok := sources[p.src]
				if !ok {
					src = []netip.Addr{fam.remote, fam.otherSrc}[len(sources)%2]
					sources[p.src] = src
				}
				x := classify(p.gre)
				to := all
				if x.erspanTyp >= 2 && x.session == 101 {
					to = s101
				}
				switch x.verdict {
				case deliver:
					dl.expect(to, x.frame, fmt.Sprintf("%s frame %d (Type %d)", name, p.index, x.erspanTyp))
					delivered++
					if x.truncated {
						truncated[to]++
					}
				case dropFrameType:
					frameType[to]++
					ft++
				}
				e.sender.send(src, L, p.gre)
				sent++
				// Keep at most 16 packets in flight: the test is
				// about bytes and order, not about buffer sizes.
				if sent%16 == 0 && !dl.wait() {
					dl.check()
					t.Fatalf("frames missing after %s frame %d; stopped", name, p.index)
				}
			}
			checkCaptureFrames(t, name, delivered)
			fmt.Fprintf(&summary, "%-46s %3d GRE packets from %d sources: %3d frames, %2d FT!=0\n", name, len(pkts), len(sources), delivered, ft)
		}
		dl.check()
		t.Logf("sent:\n%s", summary.String())
		if frameType[s101] == 0 {
			t.Errorf("no FT != 0 packet for session 101: tcpdump__erspan-type-iii-ft-7.pcap should have given some")
		}
		for _, r := range []*packetReader{all, s101} {
			e.d.waitCounters(r.name, map[string]uint64{
				"rx_packets": uint64(len(dl.want[r])), "rx_frame_type": frameType[r], "rx_truncated": truncated[r]})
		}
	})
}
