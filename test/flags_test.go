package test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTuningFlags: erspand's socket sizes (--rx-buffer, --tx-buffer) reach
// its GRE sockets, and a tuning flag out of its range stops erspand at
// start with a message naming the flag, before it listens.
func TestTuningFlags(t *testing.T) {
	requireRoot(t)
	erspand, _ := binaries(t)
	for _, bad := range [][]string{
		{"--rx-batch", "0"}, {"--rx-batch", "1025"}, {"--rx-buffer", "-1"},
		{"--tx-buffer", "1073741825"}, {"--rx-moderate", "11ms"},
	} {
		sock := filepath.Join(tempDir(t), "erspand.sock")
		out, err := exec.Command(erspand, append([]string{"--socket", sock}, bad...)...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), strings.Join(bad, " ")) {
			t.Errorf("erspand %s: %v, %q; want exit 1 naming the flag", strings.Join(bad, " "), err, out)
		}
		if _, err := os.Stat(sock); err == nil {
			t.Errorf("erspand %s made its control socket", strings.Join(bad, " "))
		}
	}

	ns := newNetNS(t, "flags")
	ns.ip(t, "addr", "add", "192.0.2.2/32", "dev", "lo")
	const rx, tx = 1 << 20, 3 << 20
	d := startDaemonIn(t, ns, tempDir(t), "--rx-buffer", strconv.Itoa(rx), "--tx-buffer", strconv.Itoa(tx), "--rx-batch", "8")
	// A collector with a tunnel destination: a receive socket, and the
	// shared send socket (its guard, and what it would send with).
	d.mustCtl("create", "erspan0", "tunnel", "192.0.2.2", "192.0.2.1", "vnetid", "5", "up")
	rcv, snd := greBuffers(t, d.pid)
	// The kernel doubles the size asked for its bookkeeping (socket(7)).
	if !slices.Contains(rcv, 2*rx) {
		t.Errorf("receive buffers of erspand's raw GRE sockets %v: none is 2 x --rx-buffer %d", rcv, rx)
	}
	if !slices.Contains(snd, 2*tx) {
		t.Errorf("send buffers of erspand's raw GRE sockets %v: none is 2 x --tx-buffer %d", snd, tx)
	}
}

// greBuffers returns SO_RCVBUF and SO_SNDBUF of every raw GRE socket of
// process pid, read on copies of its descriptors (pidfd_getfd).
func greBuffers(t *testing.T, pid int) (rcv, snd []int) {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(pidfd)
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err != nil || !strings.HasPrefix(l, "socket:") {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue // closed meanwhile
		}
		typ, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		proto, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err1 == nil && err2 == nil && typ == unix.SOCK_RAW && proto == unix.IPPROTO_GRE {
			r, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
			s, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
			if err1 != nil || err2 != nil {
				t.Fatalf("getsockopt on erspand's fd %d: %v, %v", n, err1, err2)
			}
			rcv, snd = append(rcv, r), append(snd, s)
		}
		unix.Close(fd)
	}
	if len(rcv) == 0 {
		t.Fatalf("erspand (pid %d) has no raw GRE socket", pid)
	}
	return rcv, snd
}
