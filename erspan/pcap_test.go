package erspan

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// The captures in testdata/pcaps come from the test suites of tcpdump, Zeek,
// Suricata and Arkime (testdata/pcaps/PROVENANCE.txt). golden.tsv is what
// Wireshark makes of them (testdata/golden.sh). gopacket is used here only,
// to read the files and as an independent Type II decoder.

const pcapDir = "testdata/pcaps"

// capFrame is one captured frame and where its GRE packet is.
type capFrame struct {
	file string
	num  int // frame number, from 1 as in Wireshark
	link layers.LinkType
	data []byte

	// gre is the IP payload when the frame is IP protocol 47 and not a
	// non-first fragment, cut to the IP length or to the capture; greOff
	// is where it starts in data. nil when the frame is not GRE.
	gre    []byte
	greOff int
	// fragment: IP protocol 47 but a non-first fragment, which carries
	// no GRE header (spec §4: a raw socket gets the reassembled packet).
	fragment bool
	// ipv4 is the outer IPv4 packet as captured (data from the IPv4
	// header on), nil for IPv6 or no IP.
	ipv4 []byte
}

// captureFrames reads every frame of every capture in testdata/pcaps.
func captureFrames(tb testing.TB) []capFrame {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(pcapDir, "*.pcap"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no captures in %s: %v", pcapDir, err)
	}
	slices.Sort(files)
	var out []capFrame
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			tb.Fatal(err)
		}
		r, err := pcapgo.NewReader(f)
		if err != nil {
			tb.Fatalf("%s: %v", name, err)
		}
		for num := 1; ; num++ {
			data, _, err := r.ReadPacketData()
			if err == io.EOF {
				break
			}
			if err != nil {
				tb.Fatalf("%s frame %d: %v", name, num, err)
			}
			c := capFrame{file: filepath.Base(name), num: num, link: r.LinkType(), data: data, greOff: -1}
			locateGRE(&c)
			out = append(out, c)
		}
		f.Close()
	}
	return out
}

// locateGRE finds the GRE packet in c.data: Ethernet with any number of
// 802.1Q/802.1ad tags, or raw IP (LINKTYPE_RAW); IPv4 with options (IHL);
// IPv6 with extension headers. Truncated captures give a truncated gre.
func locateGRE(c *capFrame) {
	d := c.data
	off := 0
	var version byte
	switch c.link {
	case layers.LinkTypeEthernet:
		if len(d) < 14 {
			return
		}
		et := binary.BigEndian.Uint16(d[12:])
		off = 14
		for et == 0x8100 || et == 0x88a8 || et == 0x9100 {
			if len(d) < off+4 {
				return
			}
			et = binary.BigEndian.Uint16(d[off+2:])
			off += 4
		}
		switch et {
		case 0x0800:
			version = 4
		case 0x86dd:
			version = 6
		default:
			return
		}
	case layers.LinkTypeRaw, 12, 14, layers.LinkTypeIPv4, layers.LinkTypeIPv6:
		if len(d) < 1 {
			return
		}
		version = d[0] >> 4
	default:
		return
	}
	switch version {
	case 4:
		if len(d) < off+20 {
			return
		}
		c.ipv4 = d[off:]
		ihl := int(d[off]&0xf) * 4
		if ihl < 20 || len(d) < off+ihl || d[off+9] != IPProtoGRE {
			return
		}
		if binary.BigEndian.Uint16(d[off+6:])&0x1fff != 0 {
			c.fragment = true
			return
		}
		end := min(off+int(binary.BigEndian.Uint16(d[off+2:])), len(d))
		if end < off+ihl {
			return
		}
		c.greOff, c.gre = off+ihl, d[off+ihl:end]
	case 6:
		if len(d) < off+40 {
			return
		}
		end := min(off+40+int(binary.BigEndian.Uint16(d[off+4:])), len(d))
		next, p := d[off+6], off+40
		for next != IPProtoGRE {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if p+2 > end {
					return
				}
				next, p = d[p], p+(int(d[p+1])+1)*8
			case 44: // fragment
				if p+8 > end {
					return
				}
				if binary.BigEndian.Uint16(d[p+2:])&0xfff8 != 0 {
					c.fragment = d[p] == IPProtoGRE
					return
				}
				next, p = d[p], p+8
			default:
				return
			}
		}
		if p > end {
			return
		}
		c.greOff, c.gre = p, d[p:end]
	}
}

// goldenRow is one line of golden.tsv, by column name.
type goldenRow map[string]string

// readGolden reads testdata/golden.tsv, keyed by file and frame number.
func readGolden(t *testing.T) map[string]map[int]goldenRow {
	t.Helper()
	f, err := os.Open("testdata/golden.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cols []string
	out := map[string]map[int]goldenRow{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		fields := strings.Split(line, "\t")
		if cols == nil {
			cols = fields
			continue
		}
		if len(fields) != len(cols) {
			t.Fatalf("golden.tsv: %d fields, want %d: %q", len(fields), len(cols), line)
		}
		row := goldenRow{}
		for i, c := range cols {
			row[c] = fields[i]
		}
		num, err := strconv.Atoi(row["frame"])
		if err != nil {
			t.Fatalf("golden.tsv: %q", line)
		}
		if out[row["file"]] == nil {
			out[row["file"]] = map[int]goldenRow{}
		}
		out[row["file"]][num] = row
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// num parses a golden field (decimal, or hex with 0x) as a uint64; "" is 0.
func (r goldenRow) num(t *testing.T, col string) uint64 {
	t.Helper()
	s := r[col]
	if s == "" {
		return 0
	}
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		t.Fatalf("golden %s frame %s: %s = %q", r["file"], r["frame"], col, s)
	}
	return v
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// outcome names a Decode result for the per-capture tallies.
func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	return err.(Error).Name()
}

// TestGoldenWireshark decodes every GRE packet of the captures and compares
// the result with Wireshark's (golden.tsv), field by field, including where
// the inner Ethernet frame starts. Where our documented behaviour differs
// from Wireshark's, the expected tallies below say so.
func TestGoldenWireshark(t *testing.T) {
	golden := readGolden(t)
	frames := captureFrames(t)

	// What Decode must make of each capture, by outcome; "not-gre" is a
	// frame that is not IP protocol 47, "fragment" a non-first fragment.
	want := map[string]map[string]int{
		"arkime__gre-erspan-vxlan.pcap":                 {"ok": 7},
		"suricata-verify__decode-erspan-typeI-02.pcap":  {"ok": 42},
		"suricata-verify__decode-erspan-typeII-01.pcap": {"ok": 6},
		"tcpdump__erspan-type-i-1.pcap":                 {"ok": 2},
		"tcpdump__erspan-type-i-2.pcap":                 {"ok": 2},
		"tcpdump__erspan-type-i-3.pcap":                 {"ok": 1},
		// 8 packets are IPv4 in GRE (0x0800) on the same tunnel; 23
		// frames are OSPF and LLDP.
		"tcpdump__erspan-type-i-4.pcap":      {"ok": 88, "not-erspan": 8, "not-gre": 23},
		"tcpdump__erspan-type-ii-1.pcap":     {"ok": 1},
		"tcpdump__erspan-type-ii-2.pcap":     {"ok": 16},
		"tcpdump__erspan-type-ii-3.pcap":     {"ok": 108},
		"tcpdump__erspan-type-iii-ft-0.pcap": {"ok": 9},
		// FT=7 is not Ethernet: Wireshark shows the header and the rest
		// as data; we drop it with ErrFrameType, headers filled in.
		"tcpdump__erspan-type-iii-ft-7.pcap": {"frame-type": 58},
		// A fuzzed packet with the strict source route bit and
		// recursion control 5: Wireshark dissects it anyway, we drop it
		// (spec §1, §4: R, s, recursion != 0: drop).
		"tcpdump__erspan-type-iii-pb-1.pcap": {"gre-flags": 1},
		// GRE-TEB (0x6558, egre(4)) is not ERSPAN (spec §1). 39 frames
		// are non-first IPv4 fragments, which have no GRE header: a raw
		// socket sees only the reassembled packet (spec §4); Wireshark,
		// run with reassembly off, shows them as fragments too.
		"zeek__erspan.pcap":            {"not-erspan": 248, "fragment": 39},
		"zeek__erspanI.pcap":           {"ok": 10},
		"zeek__erspanII.pcap":          {"ok": 4},
		"zeek__erspanIII.pcap":         {"ok": 2},
		"zeek__gre-erspan3-dot1q.pcap": {"ok": 2},
	}
	got := map[string]map[string]int{}
	rows := map[string]int{}

	for _, c := range frames {
		row := golden[c.file][c.num]
		if row == nil {
			t.Fatalf("%s frame %d: not in golden.tsv (run testdata/golden.sh)", c.file, c.num)
		}
		if got[c.file] == nil {
			got[c.file] = map[string]int{}
		}
		rows[c.file]++
		switch {
		case c.fragment:
			got[c.file]["fragment"]++
			if row["erspan"] != "0" || row["proto"] != "" {
				t.Errorf("%s frame %d: a fragment, Wireshark saw GRE %q", c.file, c.num, row["proto"])
			}
			continue
		case c.gre == nil:
			got[c.file]["not-gre"]++
			if row["erspan"] != "0" || row["proto"] != "" {
				t.Errorf("%s frame %d: not GRE, Wireshark saw GRE %q", c.file, c.num, row["proto"])
			}
			continue
		}

		var p Packet
		err := Decode(c.gre, &p)
		got[c.file][outcome(err)]++
		checkDecoded(t, c.gre, &p, err)
		if uint64(p.GREFlags) != row.num(t, "greflags") || uint64(p.Proto) != row.num(t, "proto") {
			t.Errorf("%s frame %d: GRE %#04x/%#04x, Wireshark %s/%s", c.file, c.num, p.GREFlags, p.Proto, row["greflags"], row["proto"])
		}

		var wantErr error
		switch {
		case row["erspan"] != "1":
			wantErr = ErrNotERSPAN
		case row.num(t, "greflags")&greDropMask != 0:
			wantErr = ErrGREFlags
		case row.num(t, "ft") != 0:
			wantErr = ErrFrameType
		}
		if err != wantErr {
			t.Errorf("%s frame %d: %v, want %v", c.file, c.num, err, wantErr)
			continue
		}
		if err != nil && err != ErrFrameType {
			continue
		}

		// The header fields: Decode fills them on ErrFrameType too.
		typ := map[string]Type{"": TypeI, "1": TypeII, "2": TypeIII}[row["version"]]
		if p.Type != typ {
			t.Errorf("%s frame %d: Type %v, Wireshark version %q", c.file, c.num, p.Type, row["version"])
		}
		type field struct {
			name string
			got  uint64
		}
		fields := []field{
			{"version", uint64(p.Version)}, {"spanid", uint64(p.Session)}, {"vlan", uint64(p.VLAN)},
			{"cos", uint64(p.COS)}, {"truncated", b2u(p.Truncated)}, {"seq", uint64(p.Seq)},
			{"key", uint64(p.Key)}, {"encap", uint64(p.Encap)}, {"index", uint64(p.Index)},
			{"timestamp", uint64(p.Timestamp)}, {"sgt", uint64(p.SGT)}, {"p", b2u(p.PDU)},
			{"ft", uint64(p.FrameType)}, {"hw", uint64(p.HWID)}, {"direction", uint64(p.Direction)},
			{"gra", uint64(p.Granularity)}, {"o", b2u(p.HasPlatform)}, {"platid", uint64(p.PlatformID)},
		}
		for _, f := range fields {
			if f.got != row.num(t, f.name) {
				t.Errorf("%s frame %d: %s = %d, Wireshark %q", c.file, c.num, f.name, f.got, row[f.name])
			}
		}
		if p.HasSeq != (row["seq"] != "") || p.HasKey != (row["key"] != "") {
			t.Errorf("%s frame %d: HasSeq %v HasKey %v, Wireshark seq %q key %q", c.file, c.num, p.HasSeq, p.HasKey, row["seq"], row["key"])
		}
		if err == ErrFrameType {
			// Wireshark does not find an Ethernet frame there either.
			if row["inner"] != "" {
				t.Errorf("%s frame %d: dropped, Wireshark found Ethernet at %s", c.file, c.num, row["inner"])
			}
			continue
		}
		// The inner frame, counted from the start of the captured frame.
		if inner := uint64(c.greOff + p.Offset); inner != row.num(t, "inner") || row["inner"] == "" {
			t.Errorf("%s frame %d: inner frame at %d, Wireshark %q", c.file, c.num, inner, row["inner"])
		}
	}

	for file, w := range want {
		if !maps.Equal(got[file], w) {
			t.Errorf("%s: outcomes %v, want %v", file, got[file], w)
		}
		if rows[file] != len(golden[file]) {
			t.Errorf("%s: %d frames read, %d in golden.tsv", file, rows[file], len(golden[file]))
		}
	}
	for file := range got {
		if want[file] == nil {
			t.Errorf("%s: no expected outcomes in this test", file)
		}
	}
	for file := range golden {
		if got[file] == nil {
			t.Errorf("golden.tsv has %s, testdata/pcaps does not", file)
		}
	}
}

// Type II fields against gopacket's ERSPANII layer, an independent decoder,
// on every Type II packet of the captures; the GRE sequence number and the
// inner frame against its GRE layer and payload.
func TestCapturesGopacketTypeII(t *testing.T) {
	checked := map[string]int{}
	for _, c := range captureFrames(t) {
		var p Packet
		if c.gre == nil || Decode(c.gre, &p) != nil || p.Type != TypeII {
			continue
		}
		pkt := gopacket.NewPacket(c.data, c.link, gopacket.DecodeOptions{NoCopy: true})
		l, ok := pkt.Layer(layers.LayerTypeERSPANII).(*layers.ERSPANII)
		g, gok := pkt.Layer(layers.LayerTypeGRE).(*layers.GRE)
		if !ok || !gok {
			t.Errorf("%s frame %d: gopacket found no ERSPAN II / GRE layer", c.file, c.num)
			continue
		}
		if l.Version != p.Version || l.VLANIdentifier != p.VLAN || l.CoS != p.COS || l.TrunkEncap != p.Encap ||
			l.IsTruncated != p.Truncated || l.SessionID != p.Session || l.Index != p.Index {
			t.Errorf("%s frame %d: gopacket %+v, Decode %+v", c.file, c.num, *l, p)
		}
		if !g.SeqPresent || g.Seq != p.Seq || g.KeyPresent != p.HasKey {
			t.Errorf("%s frame %d: gopacket GRE seq %v %d, Decode %d", c.file, c.num, g.SeqPresent, g.Seq, p.Seq)
		}
		if !bytes.Equal(l.LayerPayload(), p.Frame) {
			t.Errorf("%s frame %d: gopacket payload of %d bytes, Decode %d", c.file, c.num, len(l.LayerPayload()), len(p.Frame))
		}
		checked[c.file]++
	}
	for _, f := range []string{
		"arkime__gre-erspan-vxlan.pcap", "suricata-verify__decode-erspan-typeII-01.pcap",
		"tcpdump__erspan-type-ii-1.pcap", "tcpdump__erspan-type-ii-2.pcap", "tcpdump__erspan-type-ii-3.pcap",
		"zeek__erspanII.pcap",
	} {
		if checked[f] == 0 {
			t.Errorf("%s: no Type II packet checked", f)
		}
	}
}

// ParseIPv4 on the outer IPv4 header of every captured GRE packet finds the
// same GRE bytes as the test's own parser, or ErrShort when the capture is
// cut short of the IP total length.
func TestCapturesParseIPv4(t *testing.T) {
	n := 0
	for _, c := range captureFrames(t) {
		if c.ipv4 == nil || c.gre == nil {
			continue
		}
		n++
		src, dst, payload, err := ParseIPv4(c.ipv4)
		total := int(binary.BigEndian.Uint16(c.ipv4[2:]))
		if total > len(c.ipv4) {
			if err != ErrShort {
				t.Errorf("%s frame %d: cut capture: %v", c.file, c.num, err)
			}
			continue
		}
		if err != nil || !bytes.Equal(payload, c.gre) || src.As4() != [4]byte(c.ipv4[12:16]) || dst.As4() != [4]byte(c.ipv4[16:20]) {
			t.Errorf("%s frame %d: %v %v %v, %d bytes of GRE, want %d", c.file, c.num, src, dst, err, len(payload), len(c.gre))
		}
	}
	if n == 0 {
		t.Fatal("no IPv4 GRE packet in the captures")
	}
}

// Every prefix of every captured ERSPAN packet: an error while shorter than
// the headers plus 14 bytes, and the same headers once it is not (unless a
// checksum covers the cut bytes). Nothing panics or reads past the prefix.
func TestCapturesPrefixes(t *testing.T) {
	for _, c := range captureFrames(t) {
		var full Packet
		if c.gre == nil || Decode(c.gre, &full) != nil {
			continue
		}
		for i := 0; i < len(c.gre); i++ {
			pre := append([]byte(nil), c.gre[:i]...)
			var p Packet
			err := Decode(pre, &p)
			if i < full.Offset+EthernetMinLen {
				if err == nil {
					t.Fatalf("%s frame %d: prefix of %d bytes decoded", c.file, c.num, i)
				}
				checkDecoded(t, pre, &p, err)
				continue
			}
			if err != nil || p.Offset != full.Offset || p.Session != full.Session || p.Seq != full.Seq {
				t.Fatalf("%s frame %d: prefix of %d bytes: %v %+v", c.file, c.num, i, err, p)
			}
		}
	}
}

// testdata/pcaps holds exactly the captures PROVENANCE.txt lists, with the
// sizes and hashes it gives.
func TestCapturesProvenance(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(pcapDir, "PROVENANCE.txt"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, "|")
		name, attrs := parts[0], map[string]string{}
		for _, p := range parts[1:] {
			k, v, _ := strings.Cut(p, "=")
			attrs[k] = v
		}
		listed[name] = true
		data, err := os.ReadFile(filepath.Join(pcapDir, name))
		if err != nil {
			t.Errorf("PROVENANCE.txt lists %s: %v", name, err)
			continue
		}
		sum := sha256.Sum256(data)
		if strconv.Itoa(len(data)) != attrs["size"] || hex.EncodeToString(sum[:8]) != attrs["sha256_16"] {
			t.Errorf("%s: size %d sha256 %x, PROVENANCE.txt says %s %s", name, len(data), sum[:8], attrs["size"], attrs["sha256_16"])
		}
	}
	files, _ := filepath.Glob(filepath.Join(pcapDir, "*.pcap"))
	for _, f := range files {
		if !listed[filepath.Base(f)] {
			t.Errorf("%s is not in PROVENANCE.txt", f)
		}
	}
	if len(files) != len(listed) {
		t.Errorf("%d captures, %d listed", len(files), len(listed))
	}
}
