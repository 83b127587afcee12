package test

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/erspan-linux/erspan/erspan"
)

// wirePacket is an outer packet seen on the wire, decoded by gopacket: an
// independent decoder, not ours.
type wirePacket struct {
	ttl, tos uint8
	df       bool
	gre      *layers.GRE
	erspan   *layers.ERSPANII
	inner    []byte
}

func decodeWire(t *testing.T, frames [][]byte) []wirePacket {
	t.Helper()
	var out []wirePacket
	for _, f := range frames {
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		g, _ := p.Layer(layers.LayerTypeGRE).(*layers.GRE)
		e, _ := p.Layer(layers.LayerTypeERSPANII).(*layers.ERSPANII)
		if g == nil || e == nil {
			continue
		}
		w := wirePacket{gre: g, erspan: e, inner: e.LayerPayload()}
		if ip4, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
			w.ttl, w.tos, w.df = ip4.TTL, ip4.TOS, ip4.Flags&layers.IPv4DontFragment != 0
		} else if ip6, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
			w.ttl, w.tos = ip6.HopLimit, ip6.TrafficClass
		}
		out = append(out, w)
	}
	return out
}

// tshark decodes the wire frames with Wireshark and returns, per ERSPAN
// packet, the fields asked for (spec/erspan.md §1 names them).
func tshark(t *testing.T, frames [][]byte, fields ...string) [][]string {
	t.Helper()
	path, err := exec.LookPath("tshark")
	if err != nil {
		t.Fatalf("tshark is not installed (scripts/test.sh installs it): %v", err)
	}
	file := filepath.Join(t.TempDir(), "wire.pcap")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65536, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, fr := range frames {
		ci := gopacket.CaptureInfo{Timestamp: time.Now(), CaptureLength: len(fr), Length: len(fr)}
		if err := w.WritePacket(ci, fr); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	args := []string{"-r", file, "-Y", "erspan", "-T", "fields", "-E", "separator=|"}
	for _, fl := range fields {
		args = append(args, "-e", fl)
	}
	out, err := exec.Command(path, args...).Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			rows = append(rows, strings.Split(line, "|"))
		}
	}
	return rows
}

// framePrio is the priority `txprio packet` takes: PCP, or 3 untagged.
func framePrio(f []byte) uint8 {
	if f[12] == 0x81 && f[13] == 0 {
		return f[14] >> 5
	}
	return 3
}

// newSourceTopology is the topology with MTU 1600 on the veth (setMTU):
// a full-size mirrored frame leaves the switch unfragmented.
func newSourceTopology(t *testing.T) *topology {
	t.Helper()
	tp := newTopology(t)
	tp.setMTU(t, 1600)
	return tp
}

// expectFrames adds frames, in order, to what r must receive.
func expectFrames(dl *deliveries, r *packetReader, frames ...[]byte) {
	for _, f := range frames {
		dl.expect(r, f, frameLabel(f))
	}
}

// TestSourceToCollector: frames written into erspan0 of one namespace
// arrive byte for byte on erspan0 of another, in order; on the wire they
// are GRE + ERSPAN Type II as spec/erspan.md §2 (Transmit) says, checked
// by gopacket and by tshark.
func TestSourceToCollector(t *testing.T) {
	for _, fam := range []struct {
		name        string
		swIP, colIP netip.Addr
		ttlF, tosF  string
	}{
		{"IPv4", switch4, collect4, "ip.ttl", "ip.dsfield"},
		{"IPv6", switch6, collect6, "ipv6.hlim", "ipv6.tclass"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			tp := newSourceTopology(t)
			sw, col := startDaemon(t, tp.sw), startDaemon(t, tp.col)
			sw.mustCtl("create", "erspan0", "tunnel", fam.swIP.String(), fam.colIP.String(), "vnetid", "300", "up")
			col.mustCtl("create", "erspan0", "tunnel", fam.colIP.String(), fam.swIP.String(), "vnetid", "300", "up")
			frames := [][]byte{labeledFrame("1", 60), labeledFrame("2", 64, 0x8100<<16|5<<13|42), labeledFrame("3", 1514),
				labeledFrame("4", 200, 0x8100<<16|0<<13|42), labeledFrame("5", 90, 0x8100<<16|7<<13|42)}
			wire := newPacketReader(t, tp.sw, "veth0")
			tap := newPacketReader(t, tp.col, "erspan0")
			dl := newDeliveries(t, col, tap)
			expectFrames(dl, tap, frames...)
			inject(t, tp.sw, "erspan0", frames...)
			dl.check()
			wire.settle()
			pkts := decodeWire(t, wire.passed())
			if len(pkts) != len(frames) {
				t.Fatalf("%d ERSPAN packets on the wire, want %d", len(pkts), len(frames))
			}
			for i, p := range pkts {
				prio := framePrio(frames[i])
				if !p.gre.SeqPresent || p.gre.KeyPresent || p.gre.ChecksumPresent || p.gre.Seq != uint32(i) || p.gre.Protocol != 0x88be {
					t.Errorf("packet %d GRE %+v", i, p.gre)
				}
				e := p.erspan
				if e.Version != 1 || e.SessionID != 300 || e.CoS != prio || e.VLANIdentifier != 0 || e.TrunkEncap != 0 || e.IsTruncated || e.Index != 0 {
					t.Errorf("packet %d ERSPAN %+v", i, e)
				}
				if p.ttl != 64 || p.df || p.tos != prio<<5 {
					t.Errorf("packet %d outer ttl %d df %v tos %#x, want 64, false, %#x", i, p.ttl, p.df, p.tos, prio<<5)
				}
				if !bytes.Equal(p.inner, frames[i]) {
					t.Errorf("packet %d carries another frame", i)
				}
			}
			rows := tshark(t, wire.passed(), "gre.sequence_number", "erspan.version", "erspan.spanid", "erspan.cos", fam.ttlF, fam.tosF)
			if len(rows) != len(frames) {
				t.Fatalf("tshark decoded %d ERSPAN packets, want %d", len(rows), len(frames))
			}
			for i, r := range rows {
				prio := framePrio(frames[i])
				tos, _ := strconv.ParseUint(strings.TrimPrefix(r[5], "0x"), 16, 8)
				want := []string{strconv.Itoa(i), "1", "300", strconv.Itoa(int(prio)), "64"}
				if !slices.Equal(r[:5], want) || uint8(tos) != prio<<5 {
					t.Errorf("tshark packet %d: %v, want %v and tos %#x", i, r, want, prio<<5)
				}
			}
			var frameBytes uint64
			for _, f := range frames {
				frameBytes += uint64(len(f))
			}
			sw.waitCounters("erspan0", map[string]uint64{"tx_packets": uint64(len(frames)), "tx_bytes": frameBytes})
			c := col.status("erspan0")
			if len(c.Sources) != 1 || c.Sources[0].Lost != 0 || c.Sources[0].LastSeq != uint32(len(frames)-1) {
				t.Errorf("collector's source counters %+v", c.Sources)
			}
		})
	}
}

// TestTransmitSettings: tunnelttl, tunneldf, txprio on the wire; an
// oversize packet is dropped and counted with tunneldf, fragmented (and
// reassembled byte-exact at the collector) without.
func TestTransmitSettings(t *testing.T) {
	tp := newSourceTopology(t)
	sw, col := startDaemon(t, tp.sw), startDaemon(t, tp.col)
	sw.mustCtl("create", "erspan0", "tunnel", "192.0.2.1", "192.0.2.2", "vnetid", "7", "tunnelttl", "9", "tunneldf", "txprio", "6", "mtu", "9000", "up")
	col.mustCtl("create", "erspan0", "tunneladdr", "192.0.2.2", "mtu", "9000", "up")
	small, big, marker := labeledFrame("small", 100), labeledFrame("big", 3000, 0x8100<<16|2<<13|42), labeledFrame("marker", 100)
	wire := newPacketReader(t, tp.sw, "veth0")
	// The marker follows big through the same TAP queue and transmit
	// loop: once it is on the wire, big would have been.
	inject(t, tp.sw, "erspan0", small, big, marker)
	wire.awaitLabel(t, "marker")
	pkts := decodeWire(t, wire.passed())
	if len(pkts) != 2 || frameLabel(pkts[0].inner) != "small" || frameLabel(pkts[1].inner) != "marker" {
		t.Fatalf("%d packets on the wire, want 2: small and the marker (big dropped with df)", len(pkts))
	}
	if p := pkts[0]; p.ttl != 9 || !p.df || p.tos != 6<<5 || p.erspan.CoS != 3 || p.erspan.SessionID != 7 {
		t.Errorf("ttl %d df %v tos %#x cos %d session %d, want 9 true 0xc0 3 7", p.ttl, p.df, p.tos, p.erspan.CoS, p.erspan.SessionID)
	}
	waitFor(t, "tx_too_big", func() bool { return sw.status("erspan0").Counters.TxTooBig == 1 })

	// Allowed while up, as in OpenBSD.
	sw.mustCtl("erspan0", "-tunneldf", "txprio", "packet")
	wire = newPacketReader(t, tp.sw, "veth0")
	r := newPacketReader(t, tp.col, "erspan0")
	dl := newDeliveries(t, col, r)
	dl.expect(r, big, "the big frame, whole")
	inject(t, tp.sw, "erspan0", big)
	dl.check()
	greOf := func(f []byte) *layers.IPv4 {
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		if ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok && ip.Protocol == layers.IPProtocolGRE {
			return ip
		}
		return nil
	}
	// The collector reassembled the frame, so every fragment passed;
	// wait for this reader to have read them.
	lastFrag := func(_, out [][]byte) bool {
		return slices.ContainsFunc(out, func(f []byte) bool {
			ip := greOf(f)
			return ip != nil && ip.FragOffset != 0 && ip.Flags&layers.IPv4MoreFragments == 0
		})
	}
	if !wire.waitUntil(frameTimeout, lastFrag) {
		t.Error("the last fragment of the big frame was not seen on the wire")
	}
	frags := 0
	for _, f := range wire.passed() {
		if ip := greOf(f); ip != nil {
			frags++
			if ip.Flags&layers.IPv4DontFragment != 0 || ip.TOS != 2<<5 {
				t.Errorf("fragment flags %v tos %#x", ip.Flags, ip.TOS)
			}
		}
	}
	if frags < 2 {
		t.Errorf("%d outer packets for a 3000-byte frame without df, want fragments", frags)
	}
	// The dropped frame had sequence number 1: the collector counts it
	// lost, as it would any mirrored frame that never arrived.
	if s := col.status("erspan0"); len(s.Sources) != 1 || s.Sources[0].LastSeq != 3 || s.Sources[0].Lost != 1 {
		t.Errorf("collector's source counters %+v", s.Sources)
	}
	for _, bad := range [][]string{{"tunnelttl", "0"}, {"txprio", "8"}, {"mtu", "40"}} {
		res := sw.ctl(append([]string{"erspan0"}, bad...)...)
		if res.code == 0 || !strings.Contains(res.stderr, "EINVAL") || !strings.Contains(res.stderr, "erspan0 "+bad[0]) {
			t.Errorf("%v: exit %d, %q", bad, res.code, res.stderr)
		}
	}
}

// TestNamespaces: tunneldomain puts the tunnel's sockets in another
// namespace than the daemon's; rdomain moves the interface into another
// (an IDS container's), while the tunnel stays where it is.
func TestNamespaces(t *testing.T) {
	hostA := newNetNS(t, "hosta")
	tp := newSourceTopology(t)
	hostB, ids := newNetNS(t, "hostb"), newNetNS(t, "ids")
	a, b := startDaemon(t, hostA), startDaemon(t, hostB)
	a.mustCtl("create", "erspan0", "tunneldomain", tp.sw.name, "tunnel", "192.0.2.1", "192.0.2.2", "vnetid", "5", "up")
	res := a.ctl("erspan0", "tunneldomain", tp.col.name)
	if res.code == 0 || !strings.Contains(res.stderr, "EBUSY") {
		t.Errorf("tunneldomain while up: exit %d %q", res.code, res.stderr)
	}
	res = b.ctl("create", "erspan0", "tunneldomain", "erspt-no-such-ns")
	if res.code == 0 || !strings.Contains(res.stderr, "ENOENT") || !strings.Contains(res.stderr, "ip netns") {
		t.Errorf("tunneldomain of a missing namespace: exit %d %q", res.code, res.stderr)
	}
	b.mustCtl("erspan0", "tunneldomain", tp.col.name, "tunnel", "192.0.2.2", "192.0.2.1", "vnetid", "5", "rdomain", ids.name, "up")
	frames := [][]byte{labeledFrame("1", 80), labeledFrame("2", 81, 0x8100<<16|4<<13|42)}
	idsTAP := newPacketReader(t, ids, "erspan0")
	dl := newDeliveries(t, b, idsTAP)
	expectFrames(dl, idsTAP, frames...)
	inject(t, hostA, "erspan0", frames...)
	if !dl.check() {
		t.Fatalf("the IDS namespace did not get both frames byte-exact")
	}
	s := b.status("erspan0")
	if s.TunnelDomain != tp.col.name || s.Rdomain != ids.name || !s.Up || !s.Monitor {
		t.Errorf("status %+v", s)
	}
	text := b.mustCtl("erspan0")
	if !strings.Contains(text, "ttl 64 nodf rdomain "+tp.col.name) || !strings.Contains(text, "\trdomain "+ids.name) {
		t.Errorf("status text:\n%s", text)
	}
	// Back home: the interface returns to the daemon's namespace, still
	// up, still in monitor mode.
	b.mustCtl("erspan0", "-rdomain")
	home := newPacketReader(t, hostB, "erspan0")
	dl = newDeliveries(t, b, home)
	dl.expect(home, frames[0], "after -rdomain: "+frameLabel(frames[0]))
	inject(t, hostA, "erspan0", frames[0])
	dl.check()
}

// TestSpanPort: with addspan every frame crossing a Linux bridge (port to
// port, port to host, host to port) reaches a collector; after delspan none
// does, and no rule is left.
func TestSpanPort(t *testing.T) {
	tp := newSourceTopology(t)
	h1, h2 := newNetNS(t, "h1"), newNetNS(t, "h2")
	tp.sw.ip(t, "link", "add", "br0", "type", "bridge")
	tp.sw.ip(t, "addr", "add", "198.51.100.1/24", "dev", "br0")
	tp.sw.ip(t, "link", "set", "br0", "up")
	port := func(name string, h *netNS, addr string) {
		t.Helper()
		tp.sw.veth(t, name, nil, h, "eth0", nil)
		tp.sw.ip(t, "link", "set", name, "master", "br0")
		h.ip(t, "addr", "add", addr, "dev", "eth0")
	}
	port("p1", h1, "198.51.100.11/24")
	sw, col := startDaemon(t, tp.sw), startDaemon(t, tp.col)
	sw.mustCtl("create", "erspan0", "tunnel", "192.0.2.1", "192.0.2.2", "vnetid", "40", "up")
	col.mustCtl("create", "erspan0", "tunnel", "192.0.2.2", "192.0.2.1", "vnetid", "40", "up")
	sw.mustCtl("br0", "addspan", "erspan0")
	// A port that joins after addspan is covered too.
	port("p2", h2, "198.51.100.12/24")
	tcFilters := func(dev, dir string) string {
		t.Helper()
		out, err := exec.Command("tc", "-n", tp.sw.name, "filter", "show", "dev", dev, dir).Output()
		if err != nil {
			t.Fatalf("tc filter show dev %s %s: %v", dev, dir, err)
		}
		return string(out)
	}
	waitFor(t, "the span rule on the new port", func() bool {
		return strings.Contains(tcFilters("p2", "ingress"), "erspan-span-erspan0")
	})
	if !strings.Contains(sw.mustCtl("erspan0"), "\tspan: br0\n") {
		t.Error("no span: br0 in the status")
	}
	udp := func(ns *netNS, dst, msg string) {
		t.Helper()
		err := ns.do(func() error {
			c, err := net.Dial("udp", net.JoinHostPort(dst, "9999"))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(msg + "\n"))
			return err
		})
		if err != nil {
			t.Errorf("%s: UDP from %s to %s: %v", msg, ns.name, dst, err)
		}
	}
	r := newPacketReader(t, tp.col, "erspan0")
	udp(h1, "198.51.100.12", "port-to-port")
	udp(h1, "198.51.100.1", "port-to-host")
	udp(tp.sw, "198.51.100.12", "host-to-port")
	// Each datagram is mirrored (or not) while it crosses the bridge, in
	// the sending call; one more, sent after, comes out of the same TAP
	// queue and tunnel after their copies.
	udp(h1, "198.51.100.12", labelMark+"span-marker\x00")
	r.awaitLabel(t, "span-marker")
	got := r.received()
	for _, msg := range []string{"port-to-port", "port-to-host", "host-to-port"} {
		n := 0
		for _, f := range got {
			// UDP only: the ICMP port unreachable that answers each
			// datagram quotes it, and is mirrored too.
			if len(f) > 23 && f[12] == 0x08 && f[13] == 0 && f[23] == 17 && bytes.Contains(f, []byte(msg)) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: mirrored %d times, want once", msg, n)
		}
	}
	sw.mustCtl("br0", "delspan", "erspan0")
	for _, dev := range [][2]string{{"p1", "ingress"}, {"p2", "ingress"}, {"br0", "egress"}} {
		if out := tcFilters(dev[0], dev[1]); strings.Contains(out, "erspan-span") {
			t.Errorf("a span rule is left on %s %s:\n%s", dev[0], dev[1], out)
		}
	}
	r = newPacketReader(t, tp.col, "erspan0")
	udp(h1, "198.51.100.12", "after-delspan")
	// No mirror is left to carry a marker: send one into erspan0 itself,
	// behind the copy a rule left behind would have queued there.
	inject(t, tp.sw, "erspan0", labeledFrame("delspan-marker", 64))
	r.awaitLabel(t, "delspan-marker")
	for _, f := range r.received() {
		if bytes.Contains(f, []byte("after-delspan")) {
			t.Error("traffic mirrored after delspan")
		}
	}
	if res := sw.ctl("br9", "addspan", "erspan0"); res.code == 0 || !strings.Contains(res.stderr, "ENODEV") {
		t.Errorf("addspan on a missing bridge: exit %d %q", res.code, res.stderr)
	}
}

// TestHostnameFiles: erspand applies /etc/erspan/hostname.erspanN at start;
// a bad line is reported with file and line and does not stop the others.
func TestHostnameFiles(t *testing.T) {
	tp := newSourceTopology(t)
	dir := tempDir(t)
	etc := filepath.Join(dir, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"hostname.erspan0": "# the switch at 192.0.2.1\ntunnel 192.0.2.2 192.0.2.1\nvnetid 5000\nvnetid 5 # session\n\nup\n",
		"hostname.erspan1": "tunneladdr 192.0.2.2 up\n",
		"hostname.eth0":    "up\n",
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(etc, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	col := startDaemonIn(t, tp.col, dir)
	s := col.status("erspan0")
	if !s.Up || s.VNetID == nil || *s.VNetID != 5 || s.Tunnel == nil || s.Tunnel.Dst != "192.0.2.1" {
		t.Errorf("erspan0 from its hostname file: %+v", s)
	}
	if s := col.status("erspan1"); !s.Up || s.VNetID != nil {
		t.Errorf("erspan1: %+v", s)
	}
	if log := col.log(); !strings.Contains(log, "hostname.erspan0:3") || !strings.Contains(log, "EINVAL") {
		t.Errorf("the bad line is not reported with file:line:\n%s", log)
	}
	// The interface works.
	f := labeledFrame("hostname file", 70)
	r := newPacketReader(t, tp.col, "erspan0")
	dl := newDeliveries(t, col, r)
	dl.expect(r, f, "the frame to session 5")
	newSender(t, tp.sw).send(switch4, collect4, encap(t, erspan.Packet{Type: erspan.TypeII, Session: 5}, f))
	dl.check()
}

// TestRestart: erspand killed with SIGKILL and started again re-adopts its
// TAPs with all their settings; frames flow again and the GRE sequence
// continues upward.
func TestRestart(t *testing.T) {
	tp := newSourceTopology(t)
	sw, col := startDaemon(t, tp.sw), startDaemon(t, tp.col)
	sw.mustCtl("create", "erspan0", "tunnel", "192.0.2.1", "192.0.2.2", "vnetid", "21", "tunnelttl", "33", "txprio", "2", "lladdr", "fe:e1:ba:d0:00:21", "up")
	col.mustCtl("create", "erspan0", "tunnel", "192.0.2.2", "192.0.2.1", "vnetid", "21", "up")
	before := sw.status("erspan0")
	seqs := func(frames ...[]byte) []uint32 {
		wire := newPacketReader(t, tp.sw, "veth0")
		inject(t, tp.sw, "erspan0", frames...)
		// Every frame's packet, then quiet: one more would show.
		wire.waitUntil(frameTimeout, func(_, out [][]byte) bool { return len(decodeWire(t, out)) >= len(frames) })
		wire.settle()
		var s []uint32
		for _, p := range decodeWire(t, wire.passed()) {
			s = append(s, p.gre.Seq)
		}
		return s
	}
	first := seqs(labeledFrame("1", 64), labeledFrame("2", 64), labeledFrame("3", 64))
	if fmt.Sprint(first) != "[0 1 2]" {
		t.Fatalf("sequence numbers %v, want [0 1 2]", first)
	}
	// Let the state file catch the sequence number (saved every second).
	waitFor(t, "the state file", func() bool {
		b, _ := os.ReadFile(filepath.Join(sw.dir, "state"))
		return strings.Contains(string(b), `"seq": 3`)
	})
	sw.kill()
	sw = startDaemonIn(t, tp.sw, sw.dir)
	after := sw.status("erspan0")
	if after.Index != before.Index || after.LLAddr != before.LLAddr || after.TTL != 33 || after.TxPrio != "2" || !after.Up ||
		after.VNetID == nil || *after.VNetID != 21 || after.Tunnel == nil || after.Tunnel.Dst != "192.0.2.2" {
		t.Errorf("after restart:\n%+v\nbefore:\n%+v", after, before)
	}
	f := labeledFrame("4", 64)
	r := newPacketReader(t, tp.col, "erspan0")
	dl := newDeliveries(t, col, r)
	dl.expect(r, f, "first frame after the restart")
	dl.expect(r, f, "second frame after the restart")
	second := seqs(f, f)
	if len(second) != 2 || second[0] <= 2 || second[1] != second[0]+1 {
		t.Errorf("sequence after restart %v: must continue upward from 2", second)
	}
	dl.check()
}

// TestLossCounters: a sender that skips, reorders and duplicates sequence
// numbers is reported exactly, per source, and nothing is dropped.
func TestLossCounters(t *testing.T) {
	tp := newSourceTopology(t)
	col := startDaemon(t, tp.col)
	snd := newSender(t, tp.sw)
	col.mustCtl("create", "erspan0", "tunneladdr", "192.0.2.2", "up")
	pkt := func(seq uint32, typ erspan.Type, session uint16) []byte {
		return encap(t, erspan.Packet{Type: typ, HasSeq: true, Seq: seq, Session: session}, labeledFrame(fmt.Sprint(seq), 64))
	}
	var a, b2, z [][]byte
	for _, s := range []uint32{1, 2, 3, 6, 5, 5, 7, 9, 8, 12} {
		a = append(a, pkt(s, erspan.TypeII, 9))
	}
	for _, s := range []uint32{100, 101, 103} {
		b2 = append(b2, pkt(s, erspan.TypeIII, 9))
	}
	for range 3 {
		z = append(z, pkt(0, erspan.TypeII, 10))
	}
	r := newPacketReader(t, tp.col, "erspan0")
	for _, p := range a {
		snd.send(switch4, collect4, p)
	}
	for _, p := range b2 {
		snd.send(other4, collect4, p)
	}
	r.waitIn(len(a) + len(b2))
	r.settle()
	if got := r.received(); len(got) != len(a)+len(b2) {
		t.Errorf("%d frames delivered, want all %d: anomalies never drop", len(got), len(a)+len(b2))
	}
	s := col.status("erspan0")
	if len(s.Sources) != 2 {
		t.Fatalf("sources %+v", s.Sources)
	}
	ga, gb := s.Sources[0], s.Sources[1]
	if ga.Source != "192.0.2.1" || ga.Packets != 10 || ga.Gaps != 3 || ga.Lost != 3 || ga.Reordered != 2 || ga.Duplicates != 1 || ga.LastSeq != 12 || ga.NoSequence {
		t.Errorf("source a: %+v", ga)
	}
	if gb.Source != "192.0.2.3" || gb.Packets != 3 || gb.Gaps != 1 || gb.Lost != 1 || gb.LastSeq != 103 {
		t.Errorf("source b (same session, own sequence): %+v", gb)
	}
	// A switch whose sequence is always 0 (session 10 here) is "no
	// sequence", not loss nor duplicates.
	r = newPacketReader(t, tp.col, "erspan0")
	for _, p := range z {
		snd.send(switch4, collect4, p)
	}
	r.waitIn(len(z))
	r.settle()
	s = col.status("erspan0")
	if len(s.Sources) != 3 || !s.Sources[1].NoSequence || s.Sources[1].Duplicates != 0 || s.Sources[1].Packets != 3 || *s.Sources[1].Session != 10 {
		t.Errorf("always-0 source: %+v", s.Sources)
	}
	if text := col.mustCtl("erspan0"); !strings.Contains(text, "source 192.0.2.1 session 10: 3 packets, 192 bytes, no sequence") ||
		!strings.Contains(text, "source 192.0.2.1 session 9: 10 packets, 640 bytes, seq 12, 3 lost in 3 gaps, 2 reordered, 1 duplicates") {
		t.Errorf("text:\n%s", text)
	}
}
