package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/erspan-linux/erspan/ifconfig"
)

// Bounds on every wait, so that a broken daemon fails a test instead of
// hanging the run. They are generous: a loaded CI machine under go test
// -race is slow.
const (
	daemonStartTimeout = 15 * time.Second
	ctlTimeout         = 20 * time.Second
	frameTimeout       = 5 * time.Second
	// settleTime is how long a reader keeps listening after the frames it
	// expects have come, to catch extra or misrouted ones. Packets are
	// processed in order, so by then stragglers would long have arrived;
	// it can only let an extra frame slip through, never fail a good run.
	settleTime = 300 * time.Millisecond
)

// Addresses of the two namespaces (RFC 5737 and RFC 3849 documentation
// ranges). The switch has a second address of each family so that tests can
// send "from another source".
var (
	switch4  = netip.MustParseAddr("192.0.2.1")
	collect4 = netip.MustParseAddr("192.0.2.2")
	other4   = netip.MustParseAddr("192.0.2.3")
	switch6  = netip.MustParseAddr("2001:db8::1")
	collect6 = netip.MustParseAddr("2001:db8::2")
	other6   = netip.MustParseAddr("2001:db8::3")

	switchMAC  = net.HardwareAddr{0x02, 0xe5, 0x50, 0x00, 0x00, 0x01}
	collectMAC = net.HardwareAddr{0x02, 0xe5, 0x50, 0x00, 0x00, 0x02}
)

// family names the addresses of one address family in the topology.
type family struct {
	name                    string // "inet" or "inet6", as erspanctl prints
	local, remote, otherSrc netip.Addr
}

var (
	inet  = family{"inet", collect4, switch4, other4}
	inet6 = family{"inet6", collect6, switch6, other6}
)

// eachFamily runs fn as parallel subtests, one per address family, each
// with an environment (namespaces and a daemon) of its own.
func eachFamily(t *testing.T, fn func(t *testing.T, e *env, fam family)) {
	for _, fam := range []family{inet, inet6} {
		t.Run(fam.name, func(t *testing.T) {
			t.Parallel()
			fn(t, newEnv(t), fam)
		})
	}
}

// requireRoot skips the test when it cannot create namespaces, and fails it
// when it could but iproute2 is missing (a broken setup, not a reason to
// pass silently).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the end-to-end tests create network namespaces, veth pairs, TAPs and raw sockets; run go test as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("the end-to-end tests need ip(8) from iproute2: %v", err)
	}
}

// binaries returns the paths of erspand and erspanctl, which TestMain (in
// main_test.go) builds from this tree once per run when running as root; a
// build failure there fails the whole run with the compiler's output.
func binaries(t *testing.T) (erspand, erspanctl string) {
	t.Helper()
	requireRoot(t)
	if bin == "" {
		t.Fatal("erspand and erspanctl were not built: TestMain builds them when the tests run as root")
	}
	return filepath.Join(bin, "erspand"), filepath.Join(bin, "erspanctl")
}

// netNS is a named network namespace (ip netns) made for one test.
type netNS struct {
	name string
}

// nsCounter numbers the namespaces of a run, so that names never clash.
var nsCounter atomic.Int32

// newNetNS makes a namespace named erspt-e2e-PID-N-role with lo up; it is
// deleted when the test ends.
func newNetNS(t *testing.T, role string) *netNS {
	t.Helper()
	requireRoot(t)
	n := &netNS{name: fmt.Sprintf("erspt-e2e-%d-%d-%s", os.Getpid(), nsCounter.Add(1), role)}
	runCmd(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// ip runs `ip -n NS args...` and fails the test when it fails.
func (n *netNS) ip(t *testing.T, args ...string) string {
	t.Helper()
	return runCmd(t, "ip", append([]string{"-n", n.name}, args...)...)
}

// ipErr runs `ip -n NS args...` and returns its output and error, for
// commands that may fail.
func (n *netNS) ipErr(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	return string(out), err
}

// veth joins n and peer with a veth pair, name in n and peerName in peer,
// both up; a nil MAC address leaves the kernel's choice.
func (n *netNS) veth(t *testing.T, name string, mac net.HardwareAddr, peer *netNS, peerName string, peerMAC net.HardwareAddr) {
	t.Helper()
	args := []string{"link", "add", name}
	if mac != nil {
		args = append(args, "address", mac.String())
	}
	args = append(args, "type", "veth", "peer", "name", peerName)
	if peerMAC != nil {
		args = append(args, "address", peerMAC.String())
	}
	n.ip(t, append(args, "netns", peer.name)...)
	n.ip(t, "link", "set", name, "up")
	peer.ip(t, "link", "set", peerName, "up")
	n.waitReady(t, name)
	peer.waitReady(t, peerName)
}

// waitReady waits until link name, just set up, passes frames: the
// kernel's link watcher gives it its qdisc and carrier a moment after up,
// and until then drops what is sent without a word (tunnel's vethPair
// lost its packets one run in six without this wait).
func (n *netNS) waitReady(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := n.ipErr("link", "show", name)
		if err == nil && strings.Contains(out, "state UP") && !strings.Contains(out, "qdisc noop") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s in %s not ready within 5s: %s", name, n.name, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// do runs fn on a fresh OS thread inside the namespace and returns its
// error. The thread is never unlocked, so Go ends it with the goroutine
// instead of reusing it in the wrong namespace. Sockets fn opens stay in the
// namespace for their whole life, whichever thread uses them later. fn runs
// on another goroutine: it must not call t.Fatal.
func (n *netNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(n.name)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", n.name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", n.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// topology is the switch and the collector, joined by a veth pair named
// veth0 on both sides.
type topology struct {
	sw, col *netNS
}

// newTopology makes the two namespaces: switch 192.0.2.1, 192.0.2.3,
// 2001:db8::1, 2001:db8::3; collector 192.0.2.2, 2001:db8::2. IPv6
// addresses skip DAD and neighbours are permanent, so that the first packet
// of a test goes out at once: no ARP, no neighbour discovery, no frame held
// back waiting for either.
func newTopology(t *testing.T) *topology {
	t.Helper()
	tp := &topology{sw: newNetNS(t, "sw"), col: newNetNS(t, "col")}
	tp.sw.veth(t, "veth0", switchMAC, tp.col, "veth0", collectMAC)
	for _, s := range []struct {
		ns    *netNS
		addrs []netip.Addr
		peers []netip.Addr
		peer  net.HardwareAddr
	}{
		{tp.sw, []netip.Addr{switch4, other4, switch6, other6}, []netip.Addr{collect4, collect6}, collectMAC},
		{tp.col, []netip.Addr{collect4, collect6}, []netip.Addr{switch4, other4, switch6, other6}, switchMAC},
	} {
		for _, a := range s.addrs {
			if a.Is4() {
				s.ns.ip(t, "addr", "add", a.String()+"/24", "dev", "veth0")
			} else {
				s.ns.ip(t, "addr", "add", a.String()+"/64", "dev", "veth0", "nodad")
			}
		}
		for _, p := range s.peers {
			s.ns.ip(t, "neigh", "replace", p.String(), "lladdr", s.peer.String(), "dev", "veth0", "nud", "permanent")
		}
	}
	return tp
}

// setMTU sets the MTU of veth0 on both sides. The receive tests keep 1500,
// so that a full-size mirrored frame arrives fragmented; the transmit tests
// set 1600, room for one plus its outer headers, as on networks that carry
// ERSPAN (those that want fragments send larger frames).
func (tp *topology) setMTU(t *testing.T, mtu int) {
	t.Helper()
	for _, ns := range []*netNS{tp.sw, tp.col} {
		ns.ip(t, "link", "set", "veth0", "mtu", fmt.Sprint(mtu))
	}
}

// daemon is an erspand running in a namespace, with its control socket in
// a directory of its own.
type daemon struct {
	t       *testing.T
	ns      *netNS
	dir     string
	sock    string
	logPath string
	ctlBin  string
	pid     int
	// exit is shared with the copies on makes (a copy of the struct
	// would read the error while the waiting goroutine writes it).
	exit *daemonExit
}

// daemonExit is how an erspand ended: err once done is closed.
type daemonExit struct {
	done chan struct{}
	err  error
}

// startDaemon starts erspand in ns (`ip netns exec NS erspand --socket
// DIR/erspand.sock --config-dir DIR/etc`; ip execs erspand in place, so the
// PID is the daemon's), DIR a directory of its own, and waits until its
// socket accepts connections. At the end of the test it is stopped by PID;
// its log is printed when the test failed, and a data race or panic in it
// fails the test.
func startDaemon(t *testing.T, ns *netNS) *daemon {
	t.Helper()
	binaries(t) // before making a directory
	return startDaemonIn(t, ns, tempDir(t))
}

// startDaemonIn is startDaemon with DIR given, and more of erspand's
// flags: a test writes its hostname.erspanN files into DIR/etc first, or
// starts a daemon in the DIR of one it killed, which then finds its state
// file beside the socket.
// Each daemon logs to a file of its own, so that the one before keeps its
// log for its own checks at the end of the test.
func startDaemonIn(t *testing.T, ns *netNS, dir string, flags ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, ns, dir, nil, flags...)
}

// startDaemonEnv is startDaemonIn with env (KEY=value entries) added to
// the test's environment for erspand, which ip netns exec passes on.
func startDaemonEnv(t *testing.T, ns *netNS, dir string, env []string, flags ...string) *daemon {
	t.Helper()
	erspand, erspanctl := binaries(t)
	logf, err := os.CreateTemp(dir, "erspand.*.stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d := &daemon{t: t, ns: ns, dir: dir, sock: filepath.Join(dir, "erspand.sock"),
		logPath: logf.Name(), ctlBin: erspanctl, exit: &daemonExit{done: make(chan struct{})}}
	// An empty --config-dir: the host's /etc/erspan/hostname.erspanN
	// files must not leak into a test.
	cmd := exec.Command("ip", "netns", "exec", ns.name, erspand, "--socket", d.sock,
		"--config-dir", filepath.Join(dir, "etc"))
	cmd.Args = append(cmd.Args, flags...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...) // the last of a key wins
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start erspand: %v", err)
	}
	d.pid = cmd.Process.Pid
	go func() {
		d.exit.err = cmd.Wait()
		close(d.exit.done)
	}()
	t.Cleanup(d.stop)
	deadline := time.Now().Add(daemonStartTimeout)
	for {
		if c, err := net.Dial("unix", d.sock); err == nil {
			c.Close()
			return d
		}
		select {
		case <-d.exit.done:
			t.Fatalf("erspand exited at start (%v):\n%s", d.exit.err, d.log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("erspand did not listen on %s within %v:\n%s", d.sock, daemonStartTimeout, d.log())
		}
	}
}

// tempDir is a short private directory: t.TempDir() embeds the test name,
// which can push a unix socket path past its 108-byte limit.
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "erspt-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (d *daemon) log() string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// alive reports whether the daemon process is still running.
func (d *daemon) alive() bool {
	select {
	case <-d.exit.done:
		return false
	default:
		return true
	}
}

// kill ends the daemon with SIGKILL, as a crash would, and waits until it
// has exited. Its log is still checked at the end of the test.
func (d *daemon) kill() {
	d.t.Helper()
	if err := syscall.Kill(d.pid, syscall.SIGKILL); err != nil {
		d.t.Fatalf("kill erspand (pid %d): %v", d.pid, err)
	}
	<-d.exit.done
}

func (d *daemon) stop() {
	t := d.t
	if d.alive() {
		_ = syscall.Kill(d.pid, syscall.SIGTERM)
		select {
		case <-d.exit.done:
		case <-time.After(5 * time.Second):
			t.Errorf("erspand (pid %d) ignored SIGTERM for 5s; killing it", d.pid)
			_ = syscall.Kill(d.pid, syscall.SIGKILL)
			<-d.exit.done
		}
	}
	log := d.log()
	checkRace(t, "erspand in "+d.ns.name, log)
	if strings.Contains(log, "panic:") || strings.Contains(log, "fatal error:") {
		t.Errorf("erspand reported a panic or fatal error:\n%s", log)
	} else if t.Failed() {
		t.Logf("erspand log (%s):\n%s", d.logPath, log)
	}
}

// on returns the daemon with its helpers reporting to t: a subtest must
// not fail its parent test from its own goroutine.
func (d *daemon) on(t *testing.T) *daemon {
	c := *d
	c.t = t
	return &c
}

// ctlResult is what one erspanctl run gave.
type ctlResult struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r ctlResult) String() string {
	return fmt.Sprintf("erspanctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// ctl runs erspanctl against the daemon inside its namespace. It passes
// --no-autostart so that a dead daemon shows as a failure rather than being
// silently replaced by one no test would ever stop.
func (d *daemon) ctl(args ...string) ctlResult {
	return runCtl(d.t, d.ns, d.ctlBin, nil, append([]string{"--socket", d.sock, "--no-autostart"}, args...))
}

// mustCtl runs erspanctl and fails the test unless it exits 0.
func (d *daemon) mustCtl(args ...string) string {
	d.t.Helper()
	r := d.ctl(args...)
	if r.code != 0 {
		d.t.Fatalf("%v", r)
	}
	return r.stdout
}

// runCtl runs erspanctl with args in ns, bounded by ctlTimeout, with env
// (KEY=value entries) added to the test's environment: a daemon it
// autostarts inherits both.
func runCtl(t *testing.T, ns *netNS, bin string, env, args []string) ctlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.name, bin}, args...)...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...) // the last of a key wins
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Should a child keep the pipes open (an autostarted daemon that
	// inherited them, say), do not wait for it forever.
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	r := ctlResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	checkRace(t, "erspanctl "+strings.Join(args, " "), r.stderr)
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("erspanctl %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("erspanctl %s did not finish within %v", strings.Join(args, " "), ctlTimeout)
	}
	return r
}

// status is `erspanctl -j NAME`.
func (d *daemon) status(name string) ifconfig.Status {
	d.t.Helper()
	var s ifconfig.Status
	out := d.mustCtl("-j", name)
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		d.t.Fatalf("erspanctl -j %s: %v\n%s", name, err, out)
	}
	return s
}

// all is `erspanctl -j`.
func (d *daemon) all() ifconfig.All {
	d.t.Helper()
	var a ifconfig.All
	out := d.mustCtl("-j")
	if err := json.Unmarshal([]byte(out), &a); err != nil {
		d.t.Fatalf("erspanctl -j: %v\n%s", err, out)
	}
	return a
}

// waitFor waits until cond holds, at most frameTimeout, and fails the test
// if it does not.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(frameTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// env is the usual setting of a test: the topology, a daemon in the
// collector and a sender in the switch.
type env struct {
	t      *testing.T
	tp     *topology
	d      *daemon
	sender *sender
}

func newEnv(t *testing.T) *env { t.Helper(); return newEnvFlags(t) }

// newEnvFlags is newEnv with erspand started with flags.
func newEnvFlags(t *testing.T, flags ...string) *env {
	t.Helper()
	requireRoot(t)
	binaries(t) // fail early, before making namespaces, when the build fails
	tp := newTopology(t)
	return &env{t: t, tp: tp, d: startDaemonIn(t, tp.col, tempDir(t), flags...), sender: newSender(t, tp.sw)}
}

// reader opens a packet socket on the collector's interface name.
func (e *env) reader(name string) *packetReader {
	return newPacketReader(e.t, e.tp.col, name)
}

// deliveries starts tracking frames on readers, printing the daemon's
// counters when a check fails.
func (e *env) deliveries(readers ...*packetReader) *deliveries {
	return newDeliveries(e.t, e.d, readers...)
}
