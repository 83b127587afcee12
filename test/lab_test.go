// Package test holds the end-to-end tests: real namespaces, veths, TAPs,
// erspand and erspanctl as built from this tree. They need root (CI runs
// them as root) and skip with a message otherwise.
package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/ifconfig"
)

// bin is where TestMain built erspand and erspanctl.
var bin string

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "erspan-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		build := []string{"build", "-o", dir + "/"}
		if raceEnabled {
			// Under go test -race the daemons get the race detector
			// too: most of the project's concurrency runs in them, not
			// in this binary. Every process the tests start inherits
			// GORACE, directly or through ip netns exec and erspanctl's
			// autostart. log_path=stderr, last so that it wins over a
			// caller's GORACE, puts reports in the daemon's stderr,
			// which the harnesses capture and checkRace scans.
			// atexit_sleep_ms=0, first so that a caller's GORACE can
			// override it: a race-built process otherwise sleeps 1s
			// before exiting, which made every erspanctl run a second
			// longer and ./test/ take 2m20s instead of 30s.
			build = append(build, "-race")
			os.Setenv("GORACE", "atexit_sleep_ms=0 "+os.Getenv("GORACE")+" log_path=stderr")
		}
		out, err := exec.Command("go", append(build, "../cmd/erspand", "../cmd/erspanctl")...).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building the binaries: %v\n%s", err, out)
			os.Exit(1)
		}
		bin = dir
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// checkRace fails t when out, the captured stderr or log of the process
// called name, holds a race detector report, quoting the first 40 lines of
// the first one. Without -race (see TestMain) there are none to find.
func checkRace(t *testing.T, name, out string) {
	t.Helper()
	const warning = "WARNING: DATA RACE"
	i := strings.Index(out, warning)
	if i < 0 {
		return
	}
	lines := strings.SplitAfter(out[i:], "\n")
	lines = lines[:min(len(lines), 40)]
	t.Errorf("%s reported %d data race(s); the first:\n%s", name, strings.Count(out, warning), strings.Join(lines, ""))
}

var labCounter atomic.Int32

// lab is a test's network: namespaces it made, daemons it started.
type lab struct {
	t   *testing.T
	id  string
	dir string
}

func newLab(t *testing.T) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and TAPs")
	}
	return &lab{t: t, id: fmt.Sprintf("erspt-e2e-%d-%d", os.Getpid(), labCounter.Add(1)), dir: t.TempDir()}
}

func (l *lab) sh(cmd string) {
	l.t.Helper()
	out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
}

// ns creates namespace id-name, deleted when the test ends. DAD is off:
// until link-local DAD ends the kernel ignores neighbour solicitations.
func (l *lab) ns(name string) string {
	l.t.Helper()
	n := l.id + "-" + name
	l.sh("ip netns add " + n + " && ip -n " + n + " link set lo up && ip netns exec " + n +
		" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
	l.t.Cleanup(func() {
		// Processes left in it first, by PID, then the namespace. Not
		// this test binary: a goroutine that entered the namespace with
		// a locked thread can leave Go's main thread wedged there, and
		// `ip netns pids` then lists us.
		if out, err := exec.Command("ip", "netns", "pids", n).Output(); err == nil {
			for _, p := range strings.Fields(string(out)) {
				if p != strconv.Itoa(os.Getpid()) {
					_ = exec.Command("kill", "-9", p).Run()
				}
			}
		}
		_ = exec.Command("ip", "netns", "del", n).Run()
	})
	return n
}

// pair joins namespaces a and b with a veth (va, vb): 192.0.2.1 and
// 2001:db8::1 on a, .2 and ::2 on b, with static neighbours.
func (l *lab) pair(a, b string) {
	l.t.Helper()
	l.sh(strings.Join([]string{
		"ip link add va netns " + a + " address 02:00:00:00:00:01 type veth peer name vb netns " + b + " address 02:00:00:00:00:02",
		"ip -n " + a + " addr add 192.0.2.1/24 dev va", "ip -n " + a + " addr add 2001:db8::1/64 dev va nodad",
		"ip -n " + b + " addr add 192.0.2.2/24 dev vb", "ip -n " + b + " addr add 2001:db8::2/64 dev vb nodad",
		// Room for a full-size mirrored frame plus its outer headers, as
		// on networks that carry ERSPAN; tests that want fragments send
		// larger frames.
		"ip -n " + a + " link set va mtu 1600 up", "ip -n " + b + " link set vb mtu 1600 up",
		"ip -n " + a + " neigh replace 192.0.2.2 lladdr 02:00:00:00:00:02 dev va",
		"ip -n " + a + " neigh replace 2001:db8::2 lladdr 02:00:00:00:00:02 dev va",
		"ip -n " + b + " neigh replace 192.0.2.1 lladdr 02:00:00:00:00:01 dev vb",
		"ip -n " + b + " neigh replace 2001:db8::1 lladdr 02:00:00:00:00:01 dev vb",
	}, " && "))
}

func (l *lab) sock(ns string) string { return filepath.Join(l.dir, ns, "erspand.sock") }

// daemon starts erspand in ns, with extra arguments; stderr goes to a file
// printed when the test fails and scanned for data races. It returns the
// process.
func (l *lab) daemon(ns string, args ...string) *exec.Cmd {
	l.t.Helper()
	sock := l.sock(ns)
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		l.t.Fatal(err)
	}
	logPath := filepath.Join(l.dir, ns+".log")
	// Daemons a test starts in ns one after another (TestRestart) share
	// the log; the first one's cleanup, which runs after the others'
	// (cleanups run last in, first out), checks it all for races.
	_, statErr := os.Stat(logPath)
	first := statErr != nil
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		l.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin + "/erspand", "--socket", sock,
		"--config-dir", filepath.Join(l.dir, ns+"-etc")}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		b, _ := os.ReadFile(logPath)
		if first {
			checkRace(l.t, "erspand in "+ns, string(b))
		}
		if l.t.Failed() {
			l.t.Logf("erspand log of %s:\n%s", ns, b)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return cmd
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(logPath)
	l.t.Fatalf("erspand in %s did not answer on %s:\n%s", ns, sock, b)
	return nil
}

// ctl runs erspanctl in ns (never autostarting: tests start daemons).
func (l *lab) ctl(ns string, args ...string) (stdout, stderr string, code int) {
	l.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin + "/erspanctl", "--socket", l.sock(ns), "--no-autostart"}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	checkRace(l.t, "erspanctl "+strings.Join(args, " "), e.String())
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		l.t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func (l *lab) mustCtl(ns string, args ...string) string {
	l.t.Helper()
	o, e, code := l.ctl(ns, args...)
	if code != 0 {
		l.t.Fatalf("erspanctl %s: exit %d\n%s%s", strings.Join(args, " "), code, o, e)
	}
	return o
}

func (l *lab) status(ns, iface string) ifconfig.Status {
	l.t.Helper()
	var s ifconfig.Status
	if err := json.Unmarshal([]byte(l.mustCtl(ns, "-j", iface)), &s); err != nil {
		l.t.Fatal(err)
	}
	return s
}

// in runs fn on an OS thread inside namespace ns; the thread is never
// returned to the scheduler, so it cannot leak into other goroutines.
func in(t *testing.T, ns string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err != nil {
			t.Error(err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// capture reads the frames arriving on (or, with out, also leaving) ifname
// in ns while fn runs and until quiet for 300ms, at most 5s.
func capture(t *testing.T, ns, ifname string, out bool, fn func()) [][]byte {
	t.Helper()
	var fd int
	in(t, ns, func() {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			t.Fatal(err)
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			t.Fatal(err)
		}
		// The kernel takes a received frame's VLAN tag out of the data
		// into metadata; tcpdump puts it back from PACKET_AUXDATA, and so
		// does this.
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			t.Fatal(err)
		}
	})
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(300 * time.Millisecond))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	fn()
	var frames [][]byte
	buf := make([]byte, 65536)
	oob := make([]byte, 256)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, 0)
		if err != nil {
			if err == unix.EAGAIN || err == unix.EINTR {
				break
			}
			t.Fatal(err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING && !out {
			continue
		}
		frames = append(frames, withVLAN(buf[:n], oob[:oobn]))
	}
	return frames
}

// withVLAN copies frame, putting back the VLAN tag the kernel reported in
// a PACKET_AUXDATA control message.
func withVLAN(frame, oob []byte) []byte {
	f := append([]byte(nil), frame...)
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return f
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_PACKET || m.Header.Type != unix.PACKET_AUXDATA || len(m.Data) < int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
			continue
		}
		aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
		if aux.Status&unix.TP_STATUS_VLAN_VALID == 0 || len(f) < 12 {
			continue
		}
		tpid := uint16(0x8100)
		if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
			tpid = aux.Vlan_tpid
		}
		tag := []byte{byte(tpid >> 8), byte(tpid), byte(aux.Vlan_tci >> 8), byte(aux.Vlan_tci)}
		f = append(f[:12], append(tag, f[12:]...)...)
	}
	return f
}

// inject writes frames into ifname in ns with a packet socket: to the
// kernel they are frames leaving the interface.
func inject(t *testing.T, ns, ifname string, frames ...[]byte) {
	t.Helper()
	in(t, ns, func() {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// sendGRE sends GRE payloads from ns to dst over a raw socket, bound to src
// when it is valid; the kernel writes the outer IP header.
func sendGRE(t *testing.T, ns string, src, dst netip.Addr, pkts ...[]byte) {
	t.Helper()
	in(t, ns, func() {
		family := unix.AF_INET
		var sa, la unix.Sockaddr
		if dst.Is6() {
			family = unix.AF_INET6
			sa = &unix.SockaddrInet6{Addr: dst.As16()}
			if src.IsValid() {
				la = &unix.SockaddrInet6{Addr: src.As16()}
			}
		} else {
			sa = &unix.SockaddrInet4{Addr: dst.As4()}
			if src.IsValid() {
				la = &unix.SockaddrInet4{Addr: src.As4()}
			}
		}
		fd, err := unix.Socket(family, unix.SOCK_RAW, syscall.IPPROTO_GRE)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if la != nil {
			if err := unix.Bind(fd, la); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range pkts {
			if err := unix.Sendto(fd, p, 0, sa); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// testFrame is a recognisable Ethernet frame of n bytes; pcp >= 0 adds an
// 802.1Q tag with that priority and VLAN 42.
func testFrame(tag byte, n int, pcp int) []byte {
	f := make([]byte, n)
	copy(f, []byte{0x02, 0xaa, 0, 0, 0, 0x20, 0x02, 0xaa, 0, 0, 0, 0x10})
	off := 12
	if pcp >= 0 {
		copy(f[12:], []byte{0x81, 0x00, byte(pcp) << 5, 42})
		off = 16
	}
	copy(f[off:], []byte{0x88, 0xb5}) // local experimental ethertype: no stack touches it
	for i := off + 2; i < n; i++ {
		f[i] = tag
	}
	return f
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
