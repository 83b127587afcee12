package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// Shared helpers of the Linux tests: network namespaces, packet sockets
// and hand-built frames. Every test works in namespaces of its own, named
// erspt-u-PID-N, and removes them when it ends.

var testNetnsCount atomic.Int32

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
}

// testNetns is a named network namespace (`ip netns`) made for one test.
type testNetns struct {
	name string
	h    netns.NsHandle
}

// newTestNetns makes a namespace with lo up; it is deleted when the test
// ends.
func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	requireRoot(t)
	name := fmt.Sprintf("erspt-u-%d-%d", os.Getpid(), testNetnsCount.Add(1))
	runIP(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open namespace %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	runIP(t, "-n", name, "link", "set", "lo", "up")
	return &testNetns{name: name, h: h}
}

// do runs fn on the calling goroutine inside the namespace. The goroutine
// stays on its OS thread meanwhile; the thread goes back to its namespace
// afterwards, also when fn calls t.Fatal. Should that fail, the thread
// stays locked, so that Go ends it with the goroutine instead of reusing
// it in the wrong namespace. Sockets and file descriptors fn opens keep
// the namespace; goroutines fn starts do not run in it.
func (n *testNetns) do(t *testing.T, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current namespace: %v", err)
	}
	defer orig.Close()
	if err := netns.Set(n.h); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("enter namespace %s: %v", n.name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("leave namespace %s: %v (thread kept locked)", n.name, err)
			return
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// runIP runs ip(8) with args and fails the test if it fails.
func runIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// vethPair joins two new namespaces with a veth pair named eth0 on both
// sides, addressed sender 192.0.2.1/24 + 2001:db8::1/64 and collector
// 192.0.2.2/24 + 2001:db8::2/64. Fixed MACs and permanent neighbour
// entries spare the tests ARP and neighbour discovery (whose first
// solicitation, sent before the peer is up, costs a second), and nodad
// makes the IPv6 addresses usable at once.
func vethPair(t *testing.T) (sender, collector *testNetns) {
	t.Helper()
	sender, collector = newTestNetns(t), newTestNetns(t)
	const senderMAC, collectorMAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
	runIP(t, "-n", sender.name, "link", "add", "eth0", "address", senderMAC, "type", "veth",
		"peer", "name", "eth0", "address", collectorMAC, "netns", collector.name)
	for _, side := range []struct {
		ns                   *testNetns
		v4, v6               string
		peerV4, peerV6, peer string
	}{
		{sender, "192.0.2.1/24", "2001:db8::1/64", "192.0.2.2", "2001:db8::2", collectorMAC},
		{collector, "192.0.2.2/24", "2001:db8::2/64", "192.0.2.1", "2001:db8::1", senderMAC},
	} {
		n := side.ns.name
		runIP(t, "-n", n, "addr", "add", side.v4, "dev", "eth0")
		runIP(t, "-n", n, "addr", "add", side.v6, "dev", "eth0", "nodad")
		runIP(t, "-n", n, "neigh", "add", side.peerV4, "lladdr", side.peer, "dev", "eth0", "nud", "permanent")
		runIP(t, "-n", n, "neigh", "add", side.peerV6, "lladdr", side.peer, "dev", "eth0", "nud", "permanent")
		runIP(t, "-n", n, "link", "set", "eth0", "up")
	}
	// Up is not yet ready: the kernel's link watcher gives the link its
	// qdisc (noqueue for veth) and the carrier a moment later, and until
	// then it drops what is sent (tx_dropped; sendto says nothing). A
	// test sending at once lost its packets one run in six.
	sender.waitReady(t, "eth0")
	collector.waitReady(t, "eth0")
	return sender, collector
}

// waitReady waits until link name in n, just set up, passes frames (see
// vethPair).
func (n *testNetns) waitReady(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := exec.Command("ip", "-n", n.name, "link", "show", name).CombinedOutput()
		out := string(b)
		if err == nil && strings.Contains(out, "state UP") && !strings.Contains(out, "qdisc noop") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s in %s not ready within 5s: %s", name, n.name, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openFDs counts the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	des, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(des)
}

// fdOpen reports whether descriptor fd is open.
func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// packetSniffer is an AF_PACKET socket on one link, seeing every frame in
// both directions before tc ingress runs.
type packetSniffer struct{ fd int }

// newPacketSniffer opens it on the link with index ifindex in the calling
// thread's namespace (call it inside testNetns.do); closed at test end.
func newPacketSniffer(t *testing.T, ifindex int) *packetSniffer {
	t.Helper()
	proto := int(htons16(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		t.Fatalf("AF_PACKET socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifindex}); err != nil {
		t.Fatalf("bind AF_PACKET socket to ifindex %d: %v", ifindex, err)
	}
	return &packetSniffer{fd: fd}
}

// await returns the first frame for which match is true, or nil when
// none comes within d.
func (s *packetSniffer) await(d time.Duration, match func(f []byte) bool) []byte {
	deadline := time.Now().Add(d)
	buf := make([]byte, 65536)
	for range 100000 {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(left/time.Millisecond)+1)
		if err != nil && err != unix.EINTR {
			return nil
		}
		if n <= 0 {
			continue
		}
		m, _, err := unix.Recvfrom(s.fd, buf, unix.MSG_DONTWAIT)
		if err != nil {
			continue
		}
		if match(buf[:m]) {
			return append([]byte(nil), buf[:m]...)
		}
	}
	return nil
}

func htons16(v uint16) uint16 { return v<<8 | v>>8 }

// icmpEchoFrame builds an Ethernet frame carrying an ICMP echo request
// from src to dst with identifier id.
func icmpEchoFrame(dstMAC, srcMAC net.HardwareAddr, src, dst net.IP, id uint16) []byte {
	f := make([]byte, 14+20+8+32)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:14], unix.ETH_P_IP)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(len(f)-14))
	ip[8] = 64
	ip[9] = unix.IPPROTO_ICMP
	copy(ip[12:16], src.To4())
	copy(ip[16:20], dst.To4())
	binary.BigEndian.PutUint16(ip[10:12], erspan.Checksum(ip))
	icmp := f[34:]
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:6], id)
	binary.BigEndian.PutUint16(icmp[6:8], 1)
	for i := range icmp[8:] {
		icmp[8+i] = byte(i)
	}
	binary.BigEndian.PutUint16(icmp[2:4], erspan.Checksum(icmp))
	return f
}

// isICMPv4 reports whether the Ethernet frame f carries an ICMP message of
// the given type and code (and, for echo, identifier id; -1 = any).
func isICMPv4(f []byte, typ, code byte, id int) bool {
	if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IP || f[14+9] != unix.IPPROTO_ICMP {
		return false
	}
	icmp := f[14+int(f[14]&0x0f)*4:]
	if len(icmp) < 8 || icmp[0] != typ || icmp[1] != code {
		return false
	}
	return id < 0 || int(binary.BigEndian.Uint16(icmp[4:6])) == id
}

// isICMPv6 reports whether the Ethernet frame f carries an ICMPv6 message
// of the given type and code right after the IPv6 header.
func isICMPv6(f []byte, typ, code byte) bool {
	if len(f) < 14+40+8 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IPV6 || f[14+6] != unix.IPPROTO_ICMPV6 {
		return false
	}
	return f[54] == typ && f[55] == code
}

// greSender is a raw IPPROTO_GRE socket: the kernel writes the outer IP
// header of what it sends.
type greSender struct {
	t  *testing.T
	fd int
	to unix.Sockaddr
}

// newGRESender opens it in the calling thread's namespace (call it inside
// testNetns.do), sending to dst; closed at test end.
func newGRESender(t *testing.T, dst net.IP) *greSender {
	t.Helper()
	af := unix.AF_INET6
	var to unix.Sockaddr
	if v4 := dst.To4(); v4 != nil {
		af = unix.AF_INET
		to = &unix.SockaddrInet4{Addr: [4]byte(v4)}
	} else {
		to = &unix.SockaddrInet6{Addr: [16]byte(dst.To16())}
	}
	fd, err := unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 47)
	if err != nil {
		t.Fatalf("raw GRE sending socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	// This socket receives GRE too; it must not keep copies around.
	drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &drop[0]}); err != nil {
		t.Fatalf("drop filter on the sending socket: %v", err)
	}
	return &greSender{t: t, fd: fd, to: to}
}

func (s *greSender) send(pkts ...[]byte) {
	s.t.Helper()
	for _, p := range pkts {
		if err := unix.Sendto(s.fd, p, 0, s.to); err != nil {
			s.t.Fatalf("send a GRE packet: %v", err)
		}
	}
}

// grePacket builds a GRE packet of protocol proto, with sequence number seq
// when withSeq, followed by body.
func grePacket(proto uint16, withSeq bool, seq uint32, body []byte) []byte {
	var p []byte
	if withSeq {
		p = binary.BigEndian.AppendUint16(p, 0x1000)
		p = binary.BigEndian.AppendUint16(p, proto)
		p = binary.BigEndian.AppendUint32(p, seq)
	} else {
		p = binary.BigEndian.AppendUint16(p, 0)
		p = binary.BigEndian.AppendUint16(p, proto)
	}
	return append(p, body...)
}

// fakeFrame is an arbitrary 60-byte Ethernet frame marked with tag.
func fakeFrame(tag byte) []byte {
	f := make([]byte, 60)
	copy(f, []byte{0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5})
	for i := 14; i < len(f); i++ {
		f[i] = tag
	}
	return f
}

// checkCloseUnblocks runs read, which blocks until there is something to
// read or the reader is closed, then calls closeFn, and fails t unless
// read returns an error wrapping want within 2 s. With nr, the number of
// the system call read blocks in, closeFn waits until read's thread is in
// it; with 0 (a reader that waits on a channel, which shows nowhere),
// read gets 50 ms to block, and should it not have, it runs after the
// close and must fail with want all the same.
func checkCloseUnblocks(t *testing.T, what string, nr uintptr, read, closeFn func() error, want error) {
	t.Helper()
	done := make(chan error, 1)
	if nr != 0 {
		awaitSyscall(t, goLocked(func() { done <- read() }), nr)
	} else {
		go func() { done <- read() }()
		time.Sleep(50 * time.Millisecond)
	}
	// Close in a goroutine of its own: one that cannot wake the reader
	// may wait for it, and must fail the test, not hang it.
	closed := make(chan error, 1)
	go func() { closed <- closeFn() }()
	defer func() {
		select {
		case err := <-closed:
			if err != nil {
				t.Errorf("Close: %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("Close did not return within 2 s")
		}
	}()
	select {
	case err := <-done:
		if !errors.Is(err, want) {
			t.Errorf("%s after Close: %v, want %v", what, err, want)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("Close did not unblock a pending %s", what)
	}
}

// snmpCounter reads counter name of the calling thread's namespace from
// /proc/thread-self/net/snmp, where a line of names after proto ("Ip",
// "Icmp") is followed by one of values, or, for proto "", from snmp6, a
// name and its value a line. (/proc/net is /proc/self/net, the namespace
// of the main thread: the locked test thread needs thread-self.)
func snmpCounter(t *testing.T, proto, name string) uint64 {
	t.Helper()
	file := "/proc/thread-self/net/snmp"
	if proto == "" {
		file += "6"
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		value := ""
		switch {
		case proto == "" && len(f) == 2 && f[0] == name:
			value = f[1]
		case proto == "" || len(f) == 0 || f[0] != proto+":":
			continue
		case names == nil:
			names = f
			continue
		default:
			if i := slices.Index(names, name); i > 0 && i < len(f) {
				value = f[i]
			}
		}
		if value == "" {
			break
		}
		v, err := strconv.ParseUint(value, 10, 64)
		if err != nil {
			t.Fatalf("%s %s: %q: %v", file, name, value, err)
		}
		return v
	}
	t.Fatalf("no %s %s in %s", proto, name, file)
	return 0
}

// goLocked runs fn in a goroutine on an OS thread of its own, and returns
// that thread's ID once it runs (for awaitSyscall).
func goLocked(fn func()) (tid int) {
	c := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		c <- unix.Gettid()
		fn()
	}()
	return <-c
}

// awaitSyscall waits, 5 s at most, until thread tid of this process is
// blocked in system call nr (/proc/self/task/TID/syscall): a reader that
// waits in the kernel, not one about to, or still in its moderation's
// nanosleep.
func awaitSyscall(t *testing.T, tid int, nr uintptr) {
	t.Helper()
	path := fmt.Sprintf("/proc/self/task/%d/syscall", tid)
	want := strconv.Itoa(int(nr)) + " "
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.HasPrefix(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d not in system call %d within 5 s: %q %v", tid, nr, b, err)
		}
		time.Sleep(time.Millisecond)
	}
}
