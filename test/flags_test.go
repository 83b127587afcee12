package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTuningFlags: erspand's socket sizes (--rx-buffer, --tx-buffer, or
// the environment variables ERSPAN_RX_BUFFER, ERSPAN_TX_BUFFER) reach
// each kind of socket they are for, and a tuning flag out of its range
// stops erspand at start with a message naming the flag, before it
// listens. (Every flag reaching tunnel.Linux: TestTuningReachesLinux in
// cmd/erspand; --rx-batch reaching the receive sockets: TestLinuxBatch in
// tunnel.)
func TestTuningFlags(t *testing.T) {
	requireRoot(t)
	erspand, _ := binaries(t)
	for _, bad := range [][]string{
		{"--rx-batch", "0"}, {"--rx-batch", "1025"}, {"--rx-buffer", "-1"},
		{"--tx-buffer", "1073741824"}, {"--rx-moderate", "11ms"},
	} {
		// In a directory of its own, with an empty config dir, and
		// bounded: an erspand that started after all must neither read
		// the host's /etc/erspan nor hold the test.
		dir := tempDir(t)
		sock := filepath.Join(dir, "erspand.sock")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := exec.CommandContext(ctx, erspand, append([]string{"--socket", sock, "--config-dir", filepath.Join(dir, "etc")}, bad...)...).CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), strings.Join(bad, " ")) {
			t.Errorf("erspand %s: %v, %q; want exit 1 naming the flag", strings.Join(bad, " "), err, out)
		}
		if _, err := os.Stat(sock); err == nil {
			t.Errorf("erspand %s made its control socket", strings.Join(bad, " "))
		}
	}

	// Sizes no kernel default is twice of, each used once: a value that
	// reached the wrong socket, or the other daemon, shows. A GRE
	// receive socket's eBPF ring is the size rounded up to a power of
	// two: 8 MiB and 16 MiB here, neither the default's.
	const rx, tx = 5234567, 3456789
	checkSocketBuffers(t, "--rx-buffer/--tx-buffer", rx, tx, 8<<20, nil,
		"--rx-buffer", strconv.Itoa(rx), "--tx-buffer", strconv.Itoa(tx))
	// The same from the environment alone, no flags.
	const envRx, envTx = 9345679, 4567891
	checkSocketBuffers(t, "ERSPAN_RX_BUFFER/ERSPAN_TX_BUFFER", envRx, envTx, 16<<20,
		[]string{"ERSPAN_RX_BUFFER=" + strconv.Itoa(envRx), "ERSPAN_TX_BUFFER=" + strconv.Itoa(envTx)})
	// Without the ring, the GRE receive socket's own buffer.
	const noRingRx = 1234567
	checkSocketBuffers(t, "--rx-ring=false --rx-buffer", noRingRx, tx, 0, nil,
		"--rx-ring=false", "--rx-buffer", strconv.Itoa(noRingRx), "--tx-buffer", strconv.Itoa(tx))
}

// checkSocketBuffers starts erspand in a namespace of its own with env
// added to its environment and flags, gives it each kind of socket and
// checks that it asked for rx bytes of receive buffer and tx of send
// buffer, as how (the flags or variables used) said: for the GRE receive
// socket, an eBPF ring of ring bytes (0: none, the socket's buffer).
func checkSocketBuffers(t *testing.T, how string, rx, tx, ring int, env []string, flags ...string) {
	t.Helper()
	ns := newNetNS(t, "flags")
	ns.ip(t, "addr", "add", "192.0.2.2/32", "dev", "lo")
	ns.ip(t, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.ip(t, "link", "set", "v0", "up")
	d := startDaemonEnv(t, ns, tempDir(t), env, flags...)
	// A collector with a tunnel destination: a GRE receive socket, and
	// the shared send socket (its guard, and what it would send with);
	// a sensor interface: a capture socket on v0.
	d.mustCtl("create", "erspan0", "tunnel", "192.0.2.2", "192.0.2.1", "vnetid", "5", "up")
	d.mustCtl("create", "erspan1", "tunneldev", "v0", "tunneladdr", "198.51.100.7", "vnetid", "6", "up")
	var greRcv, greSnd, capture bool
	for _, s := range socketsOf(t, d.pid) {
		// The kernel doubles the size asked for its bookkeeping
		// (socket(7)).
		switch {
		case s.domain == unix.AF_INET && s.proto == unix.IPPROTO_GRE:
			greRcv = greRcv || ring == 0 && s.rcvbuf == 2*rx
			greSnd = greSnd || s.sndbuf == 2*tx
		case s.domain == unix.AF_PACKET:
			// A capture socket is read through a ring of whole
			// blocks (128 KiB) of at least the receive buffer's
			// size, in its place.
			capture = capture || s.mapped >= rx && s.mapped < rx+128<<10
		}
	}
	// The ring's consumer and producer pages and its data, mapped once;
	// erspand maps no other BPF map.
	rings := mapped(t, d.pid, "anon_inode:bpf-map")
	if ring != 0 {
		greRcv = rings == ring+2*os.Getpagesize()
	} else if rings != 0 {
		t.Errorf("%s: %d bytes of BPF maps mapped, want none", how, rings)
	}
	if !greRcv || !greSnd || !capture {
		t.Errorf("%s: receive buffer %d on a GRE receive socket (ring %d bytes; %d mapped): %v; on a capture socket: %v; send buffer %d on a GRE send socket: %v\nsockets: %+v",
			how, rx, ring, rings, greRcv, capture, tx, greSnd, socketsOf(t, d.pid))
	}
}

type sockInfo struct {
	fd, domain, proto, rcvbuf, sndbuf int
	mapped                            int // bytes of the socket mapped into the process (a packet ring)
}

// socketsOf returns the domain, protocol, buffer sizes and mapped bytes of
// every socket of process pid, read on copies of its descriptors
// (pidfd_getfd, Linux 5.6) and in /proc/PID/maps.
func socketsOf(t *testing.T, pid int) []sockInfo {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ENOSYS) {
		t.Skipf("pidfd_open: %v (kernel before 5.3)", err)
	}
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(pidfd)
	mapped := mappedSockets(t, pid)
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []sockInfo
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(l, "socket:") {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if errors.Is(err, unix.ENOSYS) {
			t.Skipf("pidfd_getfd: %v (kernel before 5.6)", err)
		}
		if err != nil {
			continue // closed meanwhile
		}
		s := sockInfo{fd: n, mapped: mapped[l]}
		var errs [4]error
		s.domain, errs[0] = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		s.proto, errs[1] = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		s.rcvbuf, errs[2] = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
		s.sndbuf, errs[3] = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
		unix.Close(fd)
		if err := errors.Join(errs[:]...); err != nil {
			t.Fatalf("getsockopt on erspand's fd %d: %v", n, err)
		}
		out = append(out, s)
	}
	return out
}

// mappedSockets returns the bytes process pid has mapped of each socket,
// by its /proc/PID/fd link name ("socket:[INODE]"), from /proc/PID/maps.
func mappedSockets(t *testing.T, pid int) map[string]int {
	return mappings(t, pid, func(name string) bool { return strings.HasPrefix(name, "socket:") })
}

// mapped returns the bytes process pid has mapped of what /proc/PID/maps
// calls name.
func mapped(t *testing.T, pid int, name string) int {
	return mappings(t, pid, func(n string) bool { return n == name })[name]
}

// mappings returns the bytes process pid has mapped of each thing
// /proc/PID/maps names that want accepts, by name.
func mappings(t *testing.T, pid int, want func(name string) bool) map[string]int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !want(f[5]) {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("/proc/%d/maps: %q", pid, line)
		}
		out[f[5]] += int(end - start)
	}
	return out
}

// TestGOMAXPROCS: erspand says at start the GOMAXPROCS it runs with
// (scripts/bench.sh reads it there): at least 2 without GOMAXPROCS in its
// environment, also on one CPU, where the runtime's default is 1
// (cmd/erspand's procs), and an explicit one as it is.
func TestGOMAXPROCS(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t, "gmp")
	re := regexp.MustCompile(`listening on \S+ \(GOMAXPROCS (\d+)\)`)
	said := func(env []string, oneCPU bool) string {
		t.Helper()
		var d *daemon
		if oneCPU {
			// A child inherits the CPU mask of the thread that
			// starts it: this one, pinned for the start.
			runtime.LockOSThread()
			var all, one unix.CPUSet
			if err := unix.SchedGetaffinity(0, &all); err != nil {
				t.Fatal(err)
			}
			one.Set(0)
			if err := unix.SchedSetaffinity(0, &one); err != nil {
				t.Fatal(err)
			}
			d = startDaemonEnv(t, ns, tempDir(t), env)
			if err := unix.SchedSetaffinity(0, &all); err != nil {
				t.Fatal(err) // the thread stays locked, and ends with the test
			}
			runtime.UnlockOSThread()
		} else {
			d = startDaemonEnv(t, ns, tempDir(t), env)
		}
		var m []string
		waitFor(t, fmt.Sprintf("erspand (environment %q) to say its GOMAXPROCS", env), func() bool {
			m = re.FindStringSubmatch(d.log())
			return m != nil
		})
		return m[1]
	}
	// On every CPU of a machine with two or more, the runtime's default
	// is at least 2 already: that case checks the line; the one-CPU case
	// checks the raise.
	for _, oneCPU := range []bool{false, true} {
		if n, _ := strconv.Atoi(said([]string{"GOMAXPROCS="}, oneCPU)); n < 2 {
			t.Errorf("erspand without GOMAXPROCS (on one CPU: %v) runs with GOMAXPROCS %d, want at least 2", oneCPU, n)
		}
	}
	if got := said([]string{"GOMAXPROCS=1"}, false); got != "1" {
		t.Errorf("erspand with GOMAXPROCS=1 in its environment runs with GOMAXPROCS %s, want 1", got)
	}
}
