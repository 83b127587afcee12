package test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/erspan-linux/erspan/ifconfig"
)

// icmpFrom returns the ICMP and ICMPv6 messages among frames whose IP
// source is src, as "ICMP 3/2" (type/code) strings.
func icmpFrom(frames [][]byte, src netip.Addr) []string {
	var out []string
	for _, f := range frames {
		if len(f) < 14 {
			continue
		}
		ip := f[14:]
		switch binary.BigEndian.Uint16(f[12:]) {
		case 0x0800:
			if len(ip) < 20 || ip[9] != 1 || netip.AddrFrom4([4]byte(ip[12:16])) != src {
				continue
			}
			ihl := int(ip[0]&0xf) * 4
			if len(ip) >= ihl+2 {
				out = append(out, fmt.Sprintf("ICMP %d/%d", ip[ihl], ip[ihl+1]))
			}
		case 0x86dd:
			// The kernel's ICMPv6 errors carry no extension headers.
			if len(ip) < 42 || ip[6] != 58 || netip.AddrFrom16([16]byte(ip[8:24])) != src {
				continue
			}
			out = append(out, fmt.Sprintf("ICMPv6 %d/%d", ip[40], ip[41]))
		}
	}
	return out
}

// TestNoICMP checks that while erspand has a receive socket open the
// switch gets no ICMP from the collector, whatever it sends: matched,
// unmatched, Type I without a catch-all, from another source, malformed,
// and a burst that may overflow the daemon's socket. As a control, before
// any interface is up the collector's kernel answers ERSPAN with protocol
// unreachable (ICMPv6: parameter problem, unrecognised next header), which
// shows that the sniffer on the switch would see such answers.
//
// ICMP errors are rate-limited per destination with a burst of 6 (Linux
// inet_peer_xrlim_allow); every phase stays under that per source, so an
// answer the kernel wanted to send is never hidden by the limiter.
func TestNoICMP(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	e := newEnv(t)
	sniff := newPacketReader(t, e.tp.sw, "veth0")
	fams := []family{inet, inet6}

	// Control: no interface up, so no raw GRE socket in the collector.
	for _, fam := range fams {
		e.sender.send(fam.remote, fam.local, encap(t, typeII(77), labeledFrame("control "+fam.name, 60)))
	}
	ok := sniff.waitUntil(frameTimeout, func(in, _ [][]byte) bool {
		return len(icmpFrom(in, collect4)) > 0 && len(icmpFrom(in, collect6)) > 0
	})
	in := sniff.received()
	got4, got6 := icmpFrom(in, collect4), icmpFrom(in, collect6)
	if !ok {
		t.Fatalf("control: with no erspanN up the collector's kernel should answer ERSPAN with ICMP; the sniffer saw %v and %v", got4, got6)
	}
	if got4[0] != "ICMP 3/2" || got6[0] != "ICMPv6 4/1" {
		t.Errorf("control: got %v and %v, want protocol unreachable (ICMP 3/2) and parameter problem, next header (ICMPv6 4/1)", got4, got6)
	}
	seen := len(in)

	e.d.mustCtl("create", "erspan0", "tunnel", collect4.String(), switch4.String(), "vnetid", "77", "up")
	e.d.mustCtl("create", "erspan1", "tunnel", collect6.String(), switch6.String(), "vnetid", "77", "up")
	readers := map[string]*packetReader{"inet": e.reader("erspan0"), "inet6": e.reader("erspan1")}
	dl := e.deliveries(readers["inet"], readers["inet6"])
	for _, fam := range fams {
		L, R, O := fam.local, fam.remote, fam.otherSrc
		e.sender.send(R, L, encap(t, typeII(500), labeledFrame("unmatched session", 60)))
		e.sender.send(R, L, encap(t, typeI(), labeledFrame("Type I, no catch-all", 60)))
		e.sender.send(O, L, encap(t, typeII(77), labeledFrame("other source", 60)))
		bad := encap(t, typeII(77), labeledFrame("GRE version 1", 60))
		bad[1] |= 1
		e.sender.send(R, L, bad)
		f := labeledFrame("matched "+fam.name, 60)
		e.sender.send(R, L, encap(t, typeII(77), f))
		dl.expect(readers[fam.name], f, "matched "+fam.name)
	}
	dl.check() // the matched frames came out, so the others were handled
	if icmp := append(icmpFrom(sniff.received()[seen:], collect4), icmpFrom(sniff.received()[seen:], collect6)...); len(icmp) > 0 {
		t.Errorf("the collector answered with %v while erspand had its sockets open", icmp)
	}

	// A burst, which may overflow the daemon's receive socket: since Linux
	// 6.10 a raw socket drop is answered with ICMP too, unless another
	// socket takes the packet.
	seen = len(sniff.received())
	before := e.d.all().Daemon
	const burst = 3000
	for _, fam := range fams {
		pkt := encap(t, typeII(77), labeledFrame("burst "+fam.name, 1200))
		for range burst {
			e.sender.send(fam.remote, fam.local, pkt)
		}
	}
	// Wait (bounded) until the daemon has read or lost every packet. The
	// ICMP the kernel would send goes out when it drops a packet, long
	// before this returns; this wait only keeps the run short.
	deadline := time.Now().Add(frameTimeout)
	var after ifconfig.DaemonStatus
	for {
		after = e.d.all().Daemon
		if after.RxPackets+after.KernelDrops-before.RxPackets-before.KernelDrops >= 2*burst || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(settleTime)
	t.Logf("burst of %d per family: daemon read %d, kernel dropped %d", burst,
		after.RxPackets-before.RxPackets, after.KernelDrops-before.KernelDrops)
	// The burst must have reached the daemon for its silence to mean
	// anything. (Whether the socket overflowed depends on the machine;
	// veth's backlog may drop first. Overflow itself is made certain, and
	// checked, by tunnel.TestNoICMPOnOverflow.)
	if after.RxPackets == before.RxPackets {
		t.Fatal("the daemon read none of the burst: the check below would prove nothing")
	}
	if icmp := append(icmpFrom(sniff.received()[seen:], collect4), icmpFrom(sniff.received()[seen:], collect6)...); len(icmp) > 0 {
		t.Errorf("the collector answered a burst with %v while erspand had its sockets open", icmp)
	}
}
