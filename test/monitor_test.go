package test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/erspan-linux/erspan/erspan"
)

// Addresses inside the mirrored traffic of TestMonitor: erspan0 gets the
// first, the mirrored echo requests come from the second.
var (
	tapAddr  = netip.MustParseAddr("198.51.100.1")
	peerAddr = netip.MustParseAddr("198.51.100.2")
)

// echoRequest is an Ethernet frame carrying an ICMP echo request from
// peerAddr (MAC innerSrc) to tapAddr at dstMAC, with correct checksums.
func echoRequest(dstMAC net.HardwareAddr, seq uint16) []byte {
	payload := []byte(labelMark + "echo request")
	icmp := make([]byte, 8, 8+len(payload))
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], 0xe2e0)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	icmp = append(icmp, payload...)
	binary.BigEndian.PutUint16(icmp[2:], erspan.Checksum(icmp))
	ip := make([]byte, 20, 20+len(icmp))
	ip[0], ip[8], ip[9] = 0x45, 64, 1
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	binary.BigEndian.PutUint16(ip[4:], seq)
	copy(ip[12:], peerAddr.AsSlice())
	copy(ip[16:], tapAddr.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], erspan.Checksum(ip))
	ip = append(ip, icmp...)
	f := append(append(slices.Clone(dstMAC), innerSrc...), 0x08, 0x00)
	return append(f, ip...)
}

// isEchoReply reports whether f is the collector's echo reply to
// echoRequest(_, seq).
func isEchoReply(f []byte, seq uint16) bool {
	if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		return false
	}
	ip := f[14:]
	ihl := int(ip[0]&0xf) * 4
	if ip[9] != 1 || len(ip) < ihl+8 || netip.AddrFrom4([4]byte(ip[12:16])) != tapAddr || netip.AddrFrom4([4]byte(ip[16:20])) != peerAddr {
		return false
	}
	icmp := ip[ihl:]
	return icmp[0] == 0 && binary.BigEndian.Uint16(icmp[6:]) == seq
}

// TestMonitor checks monitor mode, which is on at create: a mirrored ICMP
// echo request addressed to an address of erspan0 reaches packet sockets
// on erspan0 byte for byte but the host never answers it. With -monitor
// the same frame still arrives and, as a control, the host does answer;
// with monitor again it stops. Frames a collector may only capture
// (catch-all matches) are dropped and counted without monitor mode.
func TestMonitor(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	e := newEnv(t)
	e.d.mustCtl("create", "erspan0", "tunnel", collect4.String(), switch4.String(), "vnetid", "77", "up")
	if s := e.d.status("erspan0"); !s.Monitor || !slices.Contains(s.FlagSet, "MONITOR") {
		t.Fatalf("monitor mode is not on at create: %+v", s)
	}
	e.tp.col.ip(t, "addr", "add", tapAddr.String()+"/24", "dev", "erspan0")
	e.tp.col.ip(t, "neigh", "replace", peerAddr.String(), "lladdr", innerSrc.String(), "dev", "erspan0", "nud", "permanent")
	r := e.reader("erspan0")
	dl := e.deliveries(r)

	ping := func(seq uint16, wantReply bool) {
		t.Helper()
		f := echoRequest(r.mac, seq)
		e.sender.send(switch4, collect4, encap(t, typeII(77), f))
		dl.expect(r, f, "echo request")
		dl.check()
		replied := func(_, out [][]byte) bool {
			return slices.ContainsFunc(out, func(f []byte) bool { return isEchoReply(f, seq) })
		}
		if wantReply {
			if !r.waitUntil(frameTimeout, replied) {
				t.Errorf("echo request %d: no reply with -monitor; the host should answer frames from a TAP without the filter (control)", seq)
			}
			return
		}
		// A reply would leave within microseconds of the request
		// coming in; waiting longer can only miss one, never invent one.
		if r.waitUntil(2*settleTime, replied) {
			t.Errorf("echo request %d: the host answered a mirrored frame in monitor mode", seq)
		}
	}
	ping(1, false)

	e.d.mustCtl("erspan0", "-monitor")
	if s := e.d.status("erspan0"); s.Monitor || slices.Contains(s.FlagSet, "MONITOR") || !s.Up {
		t.Errorf("after -monitor: monitor %v flags %v up %v", s.Monitor, s.FlagSet, s.Up)
	}
	ping(2, true)

	e.d.mustCtl("erspan0", "monitor")
	ping(3, false)

	// A catch-all's frames may only be captured (spec §2, Receive): without
	// monitor mode they stop at the daemon, counted.
	e.d.mustCtl("create", "erspan1", "tunneladdr", collect4.String(), "-monitor", "up")
	all := e.reader("erspan1")
	dl.watch(all)
	e.sender.send(switch4, collect4, encap(t, typeII(9), labeledFrame("catch-all without monitor", 60)))
	// Its arrival shows the one before was handled and counted: erspand
	// adds a run's counts (rx_capture_only among them) before it writes
	// the frames that follow it into their TAPs.
	marker := labeledFrame("marker", 60)
	e.sender.send(switch4, collect4, encap(t, typeII(77), marker))
	dl.expect(r, marker, "marker")
	dl.check()
	if c := e.d.status("erspan1").Counters; c.RxCaptureOnly != 1 || c.RxPackets != 0 {
		t.Errorf("erspan1 (catch-all, -monitor): rx_capture_only %d rx_packets %d, want 1 and 0", c.RxCaptureOnly, c.RxPackets)
	}
	e.d.mustCtl("erspan1", "monitor")
	f := labeledFrame("catch-all with monitor", 60)
	e.sender.send(switch4, collect4, encap(t, typeII(9), f))
	dl.expect(all, f, "catch-all with monitor")
	dl.check()
}
