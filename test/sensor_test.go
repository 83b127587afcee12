package test

import (
	"bytes"
	"encoding/binary"
	"net"
	"os/exec"
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

var (
	swMAC  = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	colMAC = net.HardwareAddr{2, 0, 0, 0, 0, 2}
)

// outerFrame builds Ethernet [+ 802.1Q vlan] + IPv4 or IPv6 + gre, from
// src to dst. frag sets the IPv4 more-fragments bit.
func outerFrame(vlan int, src, dst string, gre []byte, frag bool) []byte {
	f := append([]byte(nil), colMAC...)
	f = append(f, swMAC...)
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

func erspanII(session uint16, seq uint32, frame []byte) []byte {
	b := make([]byte, erspan.EncapTypeIILen+len(frame))
	n, _ := erspan.Encode(b, &erspan.Packet{Type: erspan.TypeII, HasSeq: true, Seq: seq, Session: session})
	copy(b[n:], frame)
	return b[:n+len(frame)]
}

// sensorLab: a switch namespace and a sensor namespace joined by a veth
// (va, vb); the sensor's vb has no address.
func sensorLab(t *testing.T) (l *lab, sw, sensor string) {
	l = newLab(t)
	sw, sensor = l.ns("sw"), l.ns("sensor")
	l.sh(strings.Join([]string{
		"ip link add va netns " + sw + " address 02:00:00:00:00:01 type veth peer name vb netns " + sensor + " address 02:00:00:00:00:02",
		"ip -n " + sw + " link set va up", "ip -n " + sensor + " link set vb up",
	}, " && "))
	l.daemon(sensor)
	return l, sw, sensor
}

// promisc reports the interface's promiscuity count (ip -d link): sysfs
// shows the namespace it was mounted for, not the thread's.
func promisc(t *testing.T, ns, dev string) bool {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-d", "link", "show", dev).Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
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
	l, sw, sensor := sensorLab(t)
	f5, f6, f7 := testFrame(5, 80, -1), testFrame(6, 81, 3), testFrame(7, 82, -1)
	pkts := [][]byte{
		outerFrame(-1, "192.0.2.1", "198.51.100.7", erspanII(5, 1, f5), false),
		outerFrame(100, "192.0.2.1", "198.51.100.7", erspanII(6, 1, f6), false), // outer 802.1Q
		outerFrame(-1, "2001:db8::1", "2001:db8::7", erspanII(5, 2, f7), false), // outer IPv6
	}
	// Without tunneldev nothing arrives: the packets are not for this host.
	l.mustCtl(sensor, "create", "erspan0", "tunneladdr", "198.51.100.7", "vnetid", "5", "up")
	got := capture(t, sensor, "erspan0", false, func() { inject(t, sw, "va", pkts...) })
	if len(got) != 0 {
		t.Fatalf("%d frames arrived without tunneldev", len(got))
	}
	if promisc(t, sensor, "vb") {
		t.Fatal("vb promiscuous before any tunneldev")
	}
	_, stderr, code := l.ctl(sensor, "erspan0", "tunneldev", "vb")
	if code == 0 || !strings.Contains(stderr, "EBUSY") {
		t.Errorf("tunneldev while up: %d %q", code, stderr)
	}
	_, stderr, code = l.ctl(sensor, "erspan0", "down", "tunneldev", "eth9")
	if code == 0 || !strings.Contains(stderr, "ENODEV") || !strings.Contains(stderr, "eth9") {
		t.Errorf("tunneldev of a missing NIC: %d %q", code, stderr)
	}
	// erspan0: session 5 only, any address; erspan1: every other session.
	l.mustCtl(sensor, "erspan0", "-tunnel", "tunneldev", "vb", "up")
	l.mustCtl(sensor, "create", "erspan1", "tunneldev", "vb", "up")
	if !promisc(t, sensor, "vb") {
		t.Error("vb not promiscuous while a tunneldev uses it")
	}
	var got1 [][]byte
	got = capture(t, sensor, "erspan0", false, func() {
		got1 = capture(t, sensor, "erspan1", false, func() { inject(t, sw, "va", pkts...) })
	})
	if len(got) != 2 || !bytes.Equal(got[0], f5) || !bytes.Equal(got[1], f7) {
		t.Errorf("erspan0 (session 5) got %d frames, want f5 and f7 byte-exact", len(got))
	}
	if len(got1) != 1 || !bytes.Equal(got1[0], f6) {
		t.Errorf("erspan1 (the rest) got %d frames, want f6 byte-exact", len(got1))
	}
	if text := l.mustCtl(sensor, "erspan0"); !strings.Contains(text, "\ttunnel: dev vb ttl 64 nodf\n") {
		t.Errorf("status:\n%s", text)
	}

	// Fragments cannot be reassembled on a capture socket: counted, dropped.
	before := l.status(sensor, "erspan0").Counters.RxPackets
	inject(t, sw, "va", outerFrame(-1, "192.0.2.1", "198.51.100.7", erspanII(5, 3, f5), true))
	waitFor(t, "the fragment counter", func() bool { return allStatus(l, sensor).Daemon.Drops["fragment"] == 1 })
	if l.status(sensor, "erspan0").Counters.RxPackets != before {
		t.Error("a fragment was delivered")
	}

	// net.inet.gre.allow=0 drops and counts everything; =1 restores.
	if out := l.mustCtl(sensor, "sysctl", "net.inet.gre.allow=0"); strings.TrimSpace(out) != "0" {
		t.Errorf("sysctl =0 printed %q", out)
	}
	got = capture(t, sensor, "erspan0", false, func() { inject(t, sw, "va", pkts[0]) })
	if len(got) != 0 {
		t.Error("delivered with net.inet.gre.allow=0")
	}
	waitFor(t, "the disallowed counter", func() bool { return allStatus(l, sensor).Daemon.Disallowed == 1 })
	l.mustCtl(sensor, "sysctl", "net.inet.gre.allow=1")
	if out := l.mustCtl(sensor, "sysctl", "net.inet.gre.allow"); strings.TrimSpace(out) != "1" {
		t.Errorf("sysctl read %q", out)
	}
	got = capture(t, sensor, "erspan0", false, func() { inject(t, sw, "va", pkts[0]) })
	if len(got) != 1 {
		t.Error("not delivered after net.inet.gre.allow=1")
	}

	// Promiscuous mode goes when the last user of vb does.
	l.mustCtl(sensor, "erspan0", "down")
	if !promisc(t, sensor, "vb") {
		t.Error("vb left promiscuous mode while erspan1 still uses it")
	}
	l.mustCtl(sensor, "destroy", "erspan1")
	waitFor(t, "vb to leave promiscuous mode", func() bool { return !promisc(t, sensor, "vb") })
}

func allStatus(l *lab, ns string) (a struct {
	Daemon struct {
		Drops      map[string]uint64 `json:"drops"`
		Disallowed uint64            `json:"disallowed"`
	} `json:"daemon"`
}) {
	l.t.Helper()
	if err := jsonUnmarshal(l.mustCtl(ns, "-j"), &a); err != nil {
		l.t.Fatal(err)
	}
	return a
}

// TestSensorCaptures: every real capture's GRE payloads, re-sent from test
// addresses to an address nobody owns (the original outer headers are
// never replayed), come out of a tunneldev catch-all byte for byte and in
// order, as the independent parser of capture_test.go expects.
func TestSensorCaptures(t *testing.T) {
	l, sw, sensor := sensorLab(t)
	l.mustCtl(sensor, "create", "erspan0", "tunneldev", "vb", "up")
	names, err := filepath.Glob(filepath.Join(captureDir, "*.pcap"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no captures in %s: %v", captureDir, err)
	}
	total := 0
	for _, path := range names {
		name := filepath.Base(path)
		var frames, want [][]byte
		for _, p := range readCapture(t, name) {
			if x := classify(p.gre); x.verdict == deliver {
				want = append(want, x.frame)
			}
			frames = append(frames, outerFrame(-1, "192.0.2.1", "198.51.100.7", p.gre, false))
		}
		got := capture(t, sensor, "erspan0", false, func() { inject(t, sw, "va", frames...) })
		if len(got) != len(want) {
			t.Errorf("%s: %d frames out of erspan0, want %d", name, len(got), len(want))
			continue
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Errorf("%s: frame %d differs", name, i)
			}
		}
		total += len(want)
	}
	if total < 250 {
		t.Errorf("only %d frames in all the captures: the captures are not all there", total)
	}
}
