package test

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/ifconfig"
)

// TestAutostart checks that erspanctl starts erspand itself, from beside its
// own executable, when no daemon answers on the socket: in the namespace
// erspanctl runs in, detached from it, reading the hostname.erspanN files
// of the ERSPAN_CONFIG_DIR erspanctl was given, and answering afterwards;
// and not for arguments it can tell are wrong.
func TestAutostart(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	erspand, erspanctl := binaries(t)
	ns := newNetNS(t, "col")
	dir := tempDir(t)
	sock := filepath.Join(dir, "erspand.sock")
	// erspanctl passes the daemon only --socket: the config dir reaches
	// it through the environment alone. vnetid needs no address in ns.
	etc := filepath.Join(dir, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "hostname.erspan1"), []byte("vnetid 42\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Registered before anything can start a daemon, so that it runs
	// (before the namespace goes) however the test ends. erspanctl gives
	// the daemon it starts our GORACE (see TestMain) and erspand.log,
	// beside the socket, for stderr.
	t.Cleanup(func() {
		stopDaemonsOn(t, sock)
		log, _ := os.ReadFile(filepath.Join(dir, "erspand.log"))
		checkRace(t, "autostarted erspand in "+ns.name, string(log))
	})

	// Arguments erspanctl can tell are wrong fail before any daemon is
	// reached or started.
	for _, bad := range []struct{ args, says string }{
		{"create foo", "foo: invalid argument (EINVAL): interface names are erspan"},
		{"erspan0 vnetd 5", "erspan0 vnetd: invalid argument (EINVAL): unknown setting"},
		{"create erspan0 tunnel 192.0.2.2", `missing argument: the form is "tunnel SRC DST"`},
		{"br0 addspan", "usage: erspanctl br0 addspan erspanN"},
		{"bogus", "neither a command"},
		{"create erspan0 tunnel 192.0.2.2 192.0.2.1 vnetid 5000 up", "erspan0 vnetid 5000: invalid argument (EINVAL): the session ID"},
		{"erspan0 tunnel 192.0.2.2 2001:db8::1", "must both be IPv4 or both be IPv6"},
		{"erspan0 mtu 9", "the MTU is a number"},
		{"sysctl net.inet.gre.alow", "unknown sysctl"},
		{"sysctl net.inet.gre.allow=2", "net.inet.gre.allow is 0 or 1"},
		{"br:0 addspan erspan0", `"br:0" is not a network interface name`},
		{"erspan0 tunneldev eth0:1", `"eth0:1" is not a network interface name`},
	} {
		r := runCtl(t, ns, erspanctl, nil, append([]string{"--socket", sock}, strings.Fields(bad.args)...))
		if r.code == 0 || !strings.Contains(r.stderr, bad.says) {
			t.Errorf("want a failure saying %q:\n%v", bad.says, r)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Fatalf("erspanctl %s started a daemon (%s: %v)", bad.args, sock, err)
		}
	}

	r := runCtl(t, ns, erspanctl, []string{"ERSPAN_CONFIG_DIR=" + etc}, []string{"--socket", sock, "create", "erspan0"})
	if r.code != 0 {
		log, _ := os.ReadFile(filepath.Join(dir, "erspand.log"))
		t.Fatalf("%v\nerspand.log:\n%s", r, log)
	}
	pid, err := socketPeer(sock)
	if err != nil {
		t.Fatalf("no daemon answers on %s after erspanctl create: %v", sock, err)
	}
	if exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err != nil || exe != erspand {
		t.Errorf("the daemon (pid %d) runs %q (%v), want %s, the one beside erspanctl", pid, exe, err, erspand)
	}
	if !sameNetNS(t, pid, ns) {
		t.Errorf("the daemon (pid %d) is not in %s, where erspanctl ran", pid, ns.name)
	}
	// Detached: the leader of a session of its own (setsid), not in the
	// session of erspanctl and its terminal (here this test's).
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		own, _ := unix.Getsid(0)
		t.Errorf("the daemon (pid %d) is in session %d (%v), want its own, %d (this test's is %d)", pid, sid, err, pid, own)
	}
	// It answers without being started again, and made the TAP.
	r = runCtl(t, ns, erspanctl, nil, []string{"--socket", sock, "--no-autostart", "-j", "erspan0"})
	var st ifconfig.Status
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil || st.Name != "erspan0" {
		t.Errorf("the autostarted daemon does not answer:\n%v", r)
	}
	// It applied the hostname.erspan1 of ERSPAN_CONFIG_DIR, not of
	// /etc/erspan: erspand takes its --config-dir from there.
	r = runCtl(t, ns, erspanctl, nil, []string{"--socket", sock, "--no-autostart", "-j", "erspan1"})
	st = ifconfig.Status{}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil || st.VNetID == nil || *st.VNetID != 42 {
		t.Errorf("the autostarted daemon did not apply %s/hostname.erspan1 (vnetid 42) from ERSPAN_CONFIG_DIR:\n%v", etc, r)
	}
	if _, err := ns.ipErr("link", "show", "erspan0"); err != nil {
		t.Errorf("no erspan0 in %s: %v", ns.name, err)
	}
	if again, err := socketPeer(sock); err != nil || again != pid {
		t.Errorf("a second erspanctl changed the daemon: pid %d, then %d (%v)", pid, again, err)
	}
}

// socketPeer returns the PID of the process listening on a unix socket.
func socketPeer(path string) (int, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return int(cred.Pid), nil
}

// sameNetNS reports whether process pid is in namespace ns.
func sameNetNS(t *testing.T, pid int, ns *netNS) bool {
	t.Helper()
	var a, b syscall.Stat_t
	if err := syscall.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &a); err != nil {
		t.Errorf("namespace of pid %d: %v", pid, err)
		return false
	}
	if err := syscall.Stat("/run/netns/"+ns.name, &b); err != nil {
		t.Errorf("namespace %s: %v", ns.name, err)
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// stopDaemonsOn stops, by PID, every process whose command line names the
// socket path (unique to the test): SIGTERM, then SIGKILL after 5s.
func stopDaemonsOn(t *testing.T, sock string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), sock) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(5 * time.Second)
		for running(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if running(pid) {
			t.Errorf("pid %d (%s) ignored SIGTERM for 5s; killing it", pid, strings.ReplaceAll(string(b), "\x00", " "))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// running reports whether pid exists and is not a zombie waiting to be
// reaped by whoever adopted it.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
