package test

import (
	"encoding/binary"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/erspan-linux/erspan/erspan"
)

// Sensor mode (tunneldev): the switch sends ERSPAN to an address nobody
// owns, and the mirrored packets reach the collector's monitoring NIC,
// which has no IP address at all, as Defender for IoT and RCDCAP sensors
// are deployed. The frames are built here and sent with a packet socket,
// so that outer 802.1Q tags, IPv6 and fragments need no kernel modules.

// outerFrame builds Ethernet [+ 802.1Q vlan] + IPv4 or IPv6 + gre, from
// src to dst, from the switch's MAC address to the sensor's. frag sets the
// IPv4 more-fragments bit.
func outerFrame(vlan int, src, dst string, gre []byte, frag bool) []byte {
	f := append([]byte(nil), collectMAC...)
	f = append(f, switchMAC...)
	if vlan >= 0 {
		f = append(f, 0x81, 0x00, byte(vlan>>8), byte(vlan))
	}
	s, d := net.ParseIP(src), net.ParseIP(dst)
	if s.To4() != nil {
		f = append(f, 0x08, 0x00)
		ip := make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, erspan.IPProtoGRE
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(gre)))
		if frag {
			binary.BigEndian.PutUint16(ip[6:], 0x2000)
		}
		copy(ip[12:], s.To4())
		copy(ip[16:], d.To4())
		binary.BigEndian.PutUint16(ip[10:], erspan.Checksum(ip))
		return append(append(f, ip...), gre...)
	}
	f = append(f, 0x86, 0xdd)
	ip := make([]byte, 40)
	ip[0], ip[6], ip[7] = 0x60, erspan.IPProtoGRE, 64
	binary.BigEndian.PutUint16(ip[4:], uint16(len(gre)))
	copy(ip[8:], s.To16())
	copy(ip[24:], d.To16())
	return append(append(f, ip...), gre...)
}

// newSensor makes a switch namespace and a sensor namespace joined by a
// veth, veth0 on both sides, with the topology's MAC addresses but no IP
// address on the sensor's, and starts erspand in the sensor.
func newSensor(t *testing.T) (sw, sensor *netNS, d *daemon) {
	t.Helper()
	binaries(t) // fail early, before making namespaces, when the build fails
	sw, sensor = newNetNS(t, "sw"), newNetNS(t, "sensor")
	sw.veth(t, "veth0", switchMAC, sensor, "veth0", collectMAC)
	return sw, sensor, startDaemon(t, sensor)
}

// promisc reports the interface's promiscuity count (ip -d link): sysfs
// shows the namespace it was mounted for, not the thread's.
func promisc(t *testing.T, ns *netNS, dev string) bool {
	t.Helper()
	out := ns.ip(t, "-d", "link", "show", dev)
	f := strings.Fields(out)
	for i := range f[:len(f)-1] {
		if f[i] == "promiscuity" {
			n, _ := strconv.Atoi(f[i+1])
			return n > 0
		}
	}
	t.Fatalf("no promiscuity in: %s", out)
	return false
}

func TestSensorMode(t *testing.T) {
	sw, sensor, d := newSensor(t)
	f5, f6, f7 := labeledFrame("f5", 80), labeledFrame("f6", 81, 0x8100<<16|3<<13|42), labeledFrame("f7", 82)
	pkts := [][]byte{
		outerFrame(-1, "192.0.2.1", "198.51.100.7", encap(t, erspan.Packet{Type: erspan.TypeII, HasSeq: true, Seq: 1, Session: 5}, f5), false),
		outerFrame(100, "192.0.2.1", "198.51.100.7", encap(t, erspan.Packet{Type: erspan.TypeII, HasSeq: true, Seq: 1, Session: 6}, f6), false), // outer 802.1Q
		outerFrame(-1, "2001:db8::1", "2001:db8::7", encap(t, erspan.Packet{Type: erspan.TypeII, HasSeq: true, Seq: 2, Session: 5}, f7), false), // outer IPv6
	}
	// Without tunneldev nothing arrives: the packets are not for this host.
	d.mustCtl("create", "erspan0", "tunneladdr", "198.51.100.7", "vnetid", "5", "up")
	tap0 := newPacketReader(t, sensor, "erspan0")
	dl := newDeliveries(t, d, tap0)
	inject(t, sw, "veth0", pkts...)
	if !dl.check() {
		t.Fatalf("frames arrived without tunneldev")
	}
	if promisc(t, sensor, "veth0") {
		t.Fatal("veth0 promiscuous before any tunneldev")
	}
	r := d.ctl("erspan0", "tunneldev", "veth0")
	if r.code == 0 || !strings.Contains(r.stderr, "EBUSY") {
		t.Errorf("tunneldev while up: %d %q", r.code, r.stderr)
	}
	r = d.ctl("erspan0", "down", "tunneldev", "eth9")
	if r.code == 0 || !strings.Contains(r.stderr, "ENODEV") || !strings.Contains(r.stderr, "eth9") {
		t.Errorf("tunneldev of a missing NIC: %d %q", r.code, r.stderr)
	}
	// erspan0: session 5 only, any address; erspan1: every other session.
	d.mustCtl("erspan0", "-tunnel", "tunneldev", "veth0", "up")
	d.mustCtl("create", "erspan1", "tunneldev", "veth0", "up")
	if !promisc(t, sensor, "veth0") {
		t.Error("veth0 not promiscuous while a tunneldev uses it")
	}
	tap0 = newPacketReader(t, sensor, "erspan0")
	tap1 := newPacketReader(t, sensor, "erspan1")
	dl = newDeliveries(t, d, tap0, tap1)
	dl.expect(tap0, f5, "f5 to erspan0 (session 5)")
	dl.expect(tap0, f7, "f7 to erspan0 (session 5)")
	dl.expect(tap1, f6, "f6 to erspan1 (the rest)")
	inject(t, sw, "veth0", pkts...)
	dl.check()
	if text := d.mustCtl("erspan0"); !strings.Contains(text, "\ttunnel: dev veth0 ttl 64 nodf\n") {
		t.Errorf("status:\n%s", text)
	}

	// Fragments cannot be reassembled on a capture socket: counted, dropped.
	before := d.status("erspan0").Counters.RxPackets
	inject(t, sw, "veth0", outerFrame(-1, "192.0.2.1", "198.51.100.7", encap(t, erspan.Packet{Type: erspan.TypeII, HasSeq: true, Seq: 3, Session: 5}, f5), true))
	waitFor(t, "the fragment counter", func() bool { return d.all().Daemon.Drops["fragment"] == 1 })
	if d.status("erspan0").Counters.RxPackets != before {
		t.Error("a fragment was delivered")
	}

	// net.inet.gre.allow=0 drops and counts everything; =1 restores.
	if out := d.mustCtl("sysctl", "net.inet.gre.allow=0"); strings.TrimSpace(out) != "0" {
		t.Errorf("sysctl =0 printed %q", out)
	}
	tap0 = newPacketReader(t, sensor, "erspan0")
	dl = newDeliveries(t, d, tap0)
	inject(t, sw, "veth0", pkts[0])
	if !dl.check() {
		t.Error("delivered with net.inet.gre.allow=0")
	}
	waitFor(t, "the disallowed counter", func() bool { return d.all().Daemon.Disallowed == 1 })
	d.mustCtl("sysctl", "net.inet.gre.allow=1")
	if out := d.mustCtl("sysctl", "net.inet.gre.allow"); strings.TrimSpace(out) != "1" {
		t.Errorf("sysctl read %q", out)
	}
	tap0 = newPacketReader(t, sensor, "erspan0")
	dl = newDeliveries(t, d, tap0)
	dl.expect(tap0, f5, "f5 after net.inet.gre.allow=1")
	inject(t, sw, "veth0", pkts[0])
	if !dl.check() {
		t.Error("not delivered after net.inet.gre.allow=1")
	}

	// Promiscuous mode goes when the last user of veth0 does.
	d.mustCtl("erspan0", "down")
	if !promisc(t, sensor, "veth0") {
		t.Error("veth0 left promiscuous mode while erspan1 still uses it")
	}
	d.mustCtl("destroy", "erspan1")
	waitFor(t, "veth0 to leave promiscuous mode", func() bool { return !promisc(t, sensor, "veth0") })
}

// TestSensorCaptures: every real capture's GRE payloads, re-sent from test
// addresses to an address nobody owns (the original outer headers are
// never replayed), come out of a tunneldev catch-all byte for byte and in
// order, as the independent parser of capture_test.go expects.
func TestSensorCaptures(t *testing.T) {
	sw, sensor, d := newSensor(t)
	d.mustCtl("create", "erspan0", "tunneldev", "veth0", "up")
	names, err := filepath.Glob(filepath.Join(captureDir, "*.pcap"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no captures in %s: %v", captureDir, err)
	}
	if len(names) != len(captureFrames) {
		t.Errorf("%d captures in %s, want the %d of captureFrames", len(names), captureDir, len(captureFrames))
	}
	for _, path := range names {
		name := filepath.Base(path)
		tap := newPacketReader(t, sensor, "erspan0")
		dl := newDeliveries(t, d, tap)
		var frames [][]byte
		delivered := 0
		for i, p := range readCapture(t, name) {
			if x := classify(p.gre); x.verdict == deliver {
				dl.expect(tap, x.frame, fmt.Sprintf("%s: packet %d", name, i))
				delivered++
			}
			frames = append(frames, outerFrame(-1, "192.0.2.1", "198.51.100.7", p.gre, false))
		}
		checkCaptureFrames(t, name, delivered)
		inject(t, sw, "veth0", frames...)
		dl.check()
	}
}
