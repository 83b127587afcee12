package test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
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
// and more than the daemon's sockets hold while it is stopped. As a
// control, before any interface is up the collector's kernel answers
// ERSPAN with protocol unreachable (ICMPv6: parameter problem,
// unrecognised next header), which shows that the sniffer on the switch
// would see such answers. The overflow phase has a control of its own
// (overflowICMP): only Linux 6.10 and later answer packets dropped on a
// full raw socket, and where the kernel does not even without a guard
// socket the phase is skipped, visibly, rather than passed.
//
// ICMP errors are rate-limited per destination with a burst of 6 (Linux
// inet_peer_xrlim_allow); the phases before the overflow stay under that
// per source, so an answer the kernel wanted to send is never hidden by
// the limiter, and of the overflow's the first would show.
//
// It runs with the daemon's default GRE sockets, which hand packets over
// in an eBPF ring and queue none, so that what overflows is the ring, and
// with --rx-ring=false, sockets read with recvmmsg, whose queues overflow.
func TestNoICMP(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	// --rx-buffer 1 MiB: a ring of 1 MiB, which some 130 of the overflow
	// phase's packets fill.
	t.Run("ring", func(t *testing.T) { testNoICMP(t, true, "--rx-buffer", "1048576") })
	t.Run("recvmmsg", func(t *testing.T) { testNoICMP(t, false, "--rx-ring=false") })
}

func testNoICMP(t *testing.T, ring bool, flags ...string) {
	e := newEnvFlags(t, flags...)
	sniff := newPacketReader(t, e.tp.sw, "veth0")
	// Only what comes in, the answers: the switch's own packets, tens of
	// thousands in the overflow phase, could fill the socket and hide them.
	if err := unix.SetsockoptInt(sniff.fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		t.Fatalf("PACKET_IGNORE_OUTGOING: %v", err)
	}
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
	// The receive sockets read an eBPF ring, or not: a daemon that fell
	// back to recvmmsg would pass the ring's run for the wrong reason.
	if rings := mapped(t, e.d.pid, "anon_inode:bpf-map"); (rings > 0) != ring {
		t.Fatalf("erspand has %d bytes of BPF maps mapped: eBPF rings %v, want %v", rings, rings > 0, ring)
	}
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

	// Overflow: with the daemon stopped its receive sockets (or rings)
	// fill up and the kernel drops the rest, which Linux 6.10 and later answer with
	// ICMP unless another raw GRE socket takes the packet (erspand's
	// guard socket). The packets match no interface, so that no TAP gets
	// them, and are 8000 bytes, sent fragmented: each takes some 13 KiB
	// of the buffer, so that about 5000 fill the 64 MiB the daemon's
	// 32 MiB SO_RCVBUFFORCE gives. The kernel's own count of a socket's
	// drops (/proc/net/raw) says when it overflowed: the daemon's counter
	// cannot be read while it is stopped. A control (overflowICMP) first
	// shows that this kernel answers such drops when there is no guard.
	//
	// Collectors only from here: erspan0 and erspan1 send to the switch,
	// and their send sockets would take what a full receive socket drops
	// whether or not erspand keeps a guard.
	pkts := map[string][]byte{}
	for _, fam := range fams {
		pkts[fam.name] = encap(t, typeII(500), labeledFrame("overflow "+fam.name, 8000))
	}
	// Control: without a guard socket, does this kernel answer the
	// packets a full raw socket drops at all? If not, the check below
	// could not fail.
	control := overflowICMP(t, fams, pkts)
	var answered, unanswered []string
	for _, fam := range fams {
		if len(control[fam.name]) == 0 {
			unanswered = append(unanswered, fam.name)
		} else {
			answered = append(answered, fam.name)
		}
	}
	if len(unanswered) == len(fams) {
		t.Skipf("overflow phase skipped: this kernel (%s) sends no ICMP for packets dropped on a full raw socket's receive buffer even without a guard socket (Linux 6.10 and later do), so there is nothing for erspand's guard to prevent", kernelRelease())
	}
	t.Logf("control: without a guard socket the collector answered an overflow with %v", control)
	e.d.mustCtl("create", "erspan2", "tunneladdr", collect4.String(), "vnetid", "77", "up")
	e.d.mustCtl("create", "erspan3", "tunneladdr", collect6.String(), "vnetid", "77", "up")
	e.d.mustCtl("erspan0", "down")
	e.d.mustCtl("erspan1", "down")
	seen = len(sniff.received())
	before := e.d.all().Daemon.KernelDrops
	if err := syscall.Kill(e.d.pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("stop erspand: %v", err)
	}
	// A stopped daemon would not see the SIGTERM that ends it.
	defer syscall.Kill(e.d.pid, syscall.SIGCONT)
	start := time.Now()
	for _, fam := range fams {
		if ring {
			// Three times what the ring holds; the daemon counts what it
			// had no room for (kernel_drops) once it runs again.
			for range 400 {
				e.sender.send(fam.remote, fam.local, pkts[fam.name])
			}
			continue
		}
		// Bounded in count only: however slow the machine, 20000 are
		// four times what it takes.
		const chunk, limit = 250, 20000
		sent := 0
		for ; rawGREDrops(t, e.tp.col, fam) == 0; sent += chunk {
			if sent >= limit {
				t.Fatalf("%s: %d packets did not overflow the stopped daemon's socket", fam.name, sent)
			}
			for range chunk {
				e.sender.send(fam.remote, fam.local, pkts[fam.name])
			}
		}
		t.Logf("%s: %d packets overflowed the stopped daemon's socket (%v so far)", fam.name, sent, time.Since(start).Round(time.Millisecond))
	}
	if err := syscall.Kill(e.d.pid, syscall.SIGCONT); err != nil {
		t.Fatalf("continue erspand: %v", err)
	}
	// The kernel reports a socket's drops with the next packet it queues
	// (SO_RXQ_OVFL): one more each, behind everything queued before, and
	// again until one is, for the first may come while the socket is
	// still full. (A ring's count is there at once.)
	waitFor(t, "the daemon to count the kernel's drops", func() bool {
		for _, fam := range fams {
			e.sender.send(fam.remote, fam.local, pkts[fam.name])
		}
		return e.d.all().Daemon.KernelDrops > before
	})
	// An answer leaves when the kernel drops a packet, long before this.
	sniff.settle()
	if icmp := append(icmpFrom(sniff.received()[seen:], collect4), icmpFrom(sniff.received()[seen:], collect6)...); len(icmp) > 0 {
		t.Errorf("the collector answered packets its full sockets dropped with %v while erspand had them open", icmp)
	}
	if len(unanswered) > 0 {
		// After the checks, so that a failure still fails the test.
		t.Skipf("overflow phase checked %v only: this kernel (%s) sends no ICMP for %v packets dropped on a full raw socket's receive buffer even without a guard socket", answered, kernelRelease(), unanswered)
	}
}

// overflowICMP is the control of TestNoICMP's overflow phase. In a
// topology of its own, with no erspand and so no guard socket, it
// overflows a raw GRE socket of each family that it opens in the
// collector with the smallest receive buffer and never reads, sending
// pkts (by family name), and returns, by family name, the ICMP the
// collector answered with (icmpFrom): Linux 6.10 and later answer the
// packets such a socket drops, older kernels not. Its own namespaces
// keep its answers out of the rate limits of TestNoICMP's.
func overflowICMP(t *testing.T, fams []family, pkts map[string][]byte) map[string][]string {
	t.Helper()
	tp := newTopology(t)
	snd := newSender(t, tp.sw)
	sniff := newPacketReader(t, tp.sw, "veth0")
	if err := unix.SetsockoptInt(sniff.fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		t.Fatalf("control: PACKET_IGNORE_OUTGOING: %v", err)
	}
	var fds []int
	err := tp.col.do(func() error {
		for _, fam := range fams {
			af := unix.AF_INET
			if fam == inet6 {
				af = unix.AF_INET6
			}
			fd, err := unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, erspan.IPProtoGRE)
			if err != nil {
				return fmt.Errorf("raw GRE socket (%s): %w", fam.name, err)
			}
			fds = append(fds, fd)
			// The kernel raises 1 to its minimum, a few KiB: the first
			// packet fills it.
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1); err != nil {
				return fmt.Errorf("SO_RCVBUF (%s): %w", fam.name, err)
			}
		}
		return nil
	})
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	if err != nil {
		t.Fatalf("control in %s: %v", tp.col.name, err)
	}
	for _, fam := range fams {
		const limit = 100
		sent := 0
		for ; rawGREDrops(t, tp.col, fam) == 0; sent++ {
			if sent >= limit {
				t.Fatalf("control: %s: %d packets did not overflow a raw GRE socket with the smallest receive buffer", fam.name, sent)
			}
			snd.send(fam.remote, fam.local, pkts[fam.name])
		}
	}
	// An answer leaves as the kernel drops a packet: on a kernel that
	// sends them this returns at once.
	sniff.waitUntil(frameTimeout, func(in, _ [][]byte) bool {
		for _, fam := range fams {
			if len(icmpFrom(in, fam.local)) == 0 {
				return false
			}
		}
		return true
	})
	got := map[string][]string{}
	for _, fam := range fams {
		got[fam.name] = icmpFrom(sniff.received(), fam.local)
	}
	return got
}

// kernelRelease is uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown release"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// rawGREDrops is the number of packets the kernel dropped on the full
// buffers of the raw GRE sockets of fam's family in ns: the drops column
// of /proc/net/raw or raw6.
func rawGREDrops(t *testing.T, ns *netNS, fam family) uint64 {
	t.Helper()
	file := "/proc/net/raw"
	if fam == inet6 {
		file = "/proc/net/raw6"
	}
	var n uint64
	for _, line := range strings.Split(runCmd(t, "ip", "netns", "exec", ns.name, "cat", file), "\n") {
		// The local address is ADDR:PROTOCOL, in hex; drops come last.
		if f := strings.Fields(line); len(f) > 2 && strings.HasSuffix(f[1], ":002F") {
			d, err := strconv.ParseUint(f[len(f)-1], 10, 64)
			if err != nil {
				t.Fatalf("%s in %s: %q: %v", file, ns.name, line, err)
			}
			n += d
		}
	}
	return n
}
