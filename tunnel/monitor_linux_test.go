package tunnel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// icmpInEchos reads Icmp InEchos (echo requests the stack received) of the
// calling thread's namespace.
func icmpInEchos(t *testing.T) uint64 { t.Helper(); return snmpCounter(t, "Icmp", "InEchos") }

func disableIPv6Value(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6")
	if err != nil {
		t.Fatalf("read disable_ipv6: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// readFrames reads frames from q until match returns true or d passes; it
// returns the matching frame (nil if none) and how many others came.
func readFrames(t *testing.T, q Queue, d time.Duration, match func([]byte) bool) ([]byte, int) {
	t.Helper()
	tq := q.(*tapQueue)
	deadline := time.Now().Add(d)
	bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
	others := 0
	for range 10000 {
		// Non-blocking reads, so that the deadline holds without
		// closing the queue.
		n, errno := tq.readBatch(bufs, sizes, 0)
		if errno == unix.EAGAIN {
			if time.Now().After(deadline) {
				return nil, others
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if n == 0 {
			t.Fatalf("read from the TAP: %v", errno)
		}
		if f := bufs[0][:sizes[0]]; match(f) {
			return append([]byte(nil), f...), others
		}
		others++
	}
	return nil, others
}

// monitorIDs returns the program IDs of our monitor attachments at the
// link's ingress, tcx and clsact together.
func monitorIDs(t *testing.T, link netlink.Link) []uint32 {
	t.Helper()
	name := link.Attrs().Name
	ids, err := tcxMonitors(link)
	if err != nil {
		t.Fatalf("%s: tcx programs: %v", name, err)
	}
	fs, err := monitorFilters(link)
	if err != nil {
		t.Fatalf("%s: filters: %v", name, err)
	}
	for _, f := range fs {
		bf := f.(*netlink.BpfFilter)
		if bf.Id == 0 {
			t.Fatalf("%s: filter %+v has no eBPF program id", name, f)
		}
		ids = append(ids, uint32(bf.Id))
	}
	return ids
}

// monitorCount counts our monitor programs at the link's ingress, tcx
// and clsact together.
func monitorCount(t *testing.T, link netlink.Link) int {
	t.Helper()
	return len(monitorIDs(t, link))
}

// attachOtherTCX loads a drop-everything program named name and attaches
// it with tcx ahead of every other at the ingress of device index in the
// calling thread's namespace: somebody else's program, or one an earlier
// erspand left when name is monitorProgName.
func attachOtherTCX(t *testing.T, index int, name string) {
	t.Helper()
	fd, err := loadProgram(unix.BPF_PROG_TYPE_SCHED_CLS, monitorInsns[:], name)
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	defer unix.Close(fd)
	if err := tcxAttachFirst(index, fd, unix.BPF_TCX_INGRESS); err != nil {
		t.Fatalf("attach %s: %v", name, err)
	}
}

// withMonitorTCX runs fn with tcx (on) or as on a kernel without it
// (tcxSupported false: monitor mode is a clsact filter, and tcx is never
// asked what is attached). The package's tests run one at a time.
func withMonitorTCX(on bool, fn func()) {
	defer func(was func() bool) { tcxSupported = was }(tcxSupported)
	if !on {
		tcxSupported = func() bool { return false }
	}
	fn()
}

// TestMonitorDropsAtIngress: monitor mode both ways it is attached, tcx
// and, as on a kernel without it, a clsact filter: a packet socket sees
// what is written into the TAP and the stack does not; off, the stack
// answers, nothing of ours is left, and somebody else's program or filter
// at the same hook stays. The clsact filter runs ahead of one there before
// it (tcx's order: TestMonitorTCXDetails).
func TestMonitorDropsAtIngress(t *testing.T) {
	for _, tcx := range []bool{true, false} {
		t.Run(map[bool]string{true: "tcx", false: "clsact"}[tcx], func(t *testing.T) {
			withMonitorTCX(tcx, func() { testMonitorDropsAtIngress(t, tcx) })
		})
	}
}

func testMonitorDropsAtIngress(t *testing.T, tcx bool) {
	ns := newTestNetns(t)
	const name = "erspan5"
	peerMAC := net.HardwareAddr{0x02, 0, 0x5e, 0, 0, 1}
	local, peer := net.IPv4(192, 0, 2, 2), net.IPv4(192, 0, 2, 1)
	var l Link
	var q Queue
	ns.do(t, func() {
		var err error
		if l, _, err = CreateTAP(name, nil, 0); err != nil {
			t.Fatalf("CreateTAP: %v", err)
		}
		if on, err := MonitorEnabled(name); err != nil || on {
			t.Fatalf("MonitorEnabled on a new TAP = %v, %v; want false", on, err)
		}
		// On twice: one program attached.
		for range 2 {
			if err := SetMonitor(name, true); err != nil {
				t.Fatalf("SetMonitor on: %v", err)
			}
		}
		link := mustLinkByName(t, name)
		if n := monitorCount(t, link); n != 1 {
			t.Fatalf("after SetMonitor on twice: %d monitor programs attached, want 1", n)
		}
		ids, err := tcxMonitors(link)
		if err != nil || (len(ids) == 1) != tcx {
			t.Fatalf("%d monitor programs at tcx (%v), want tcx %v", len(ids), err, tcx)
		}
		if on, err := MonitorEnabled(name); err != nil || !on {
			t.Fatalf("MonitorEnabled = %v, %v; want true", on, err)
		}
		if v := disableIPv6Value(t, name); v != "1" {
			t.Errorf("disable_ipv6 = %s in monitor mode, want 1", v)
		}
		if q, err = OpenQueue(name); err != nil {
			t.Fatalf("OpenQueue: %v", err)
		}
	})
	defer q.Close()
	runIP(t, "-n", ns.name, "addr", "add", "192.0.2.2/24", "dev", name)
	runIP(t, "-n", ns.name, "neigh", "add", "192.0.2.1", "lladdr", peerMAC.String(), "dev", name, "nud", "permanent")
	runIP(t, "-n", ns.name, "link", "set", name, "up")

	ns.do(t, func() {
		sniff := newPacketSniffer(t, l.Index)
		isReply := func(id int) func([]byte) bool {
			return func(f []byte) bool { return isICMPv4(f, 0, 0, id) }
		}

		// Monitor on: a packet socket sees the request, the stack does not.
		before := icmpInEchos(t)
		for id := 0x100; id < 0x105; id++ {
			if err := writeTAP(q, icmpEchoFrame(l.MAC, peerMAC, peer, local, uint16(id))); err != nil {
				t.Fatalf("write an echo request: %v", err)
			}
			if sniff.await(time.Second, func(f []byte) bool { return isICMPv4(f, 8, 0, id) }) == nil {
				t.Fatalf("the packet socket did not see echo request %#x in monitor mode", id)
			}
		}
		if f, others := readFrames(t, q, 300*time.Millisecond, func([]byte) bool { return true }); f != nil || others != 0 {
			t.Errorf("in monitor mode the TAP emitted a frame (% x...)", f[:min(len(f), 34)])
		}
		if after := icmpInEchos(t); after != before {
			t.Errorf("InEchos went from %d to %d in monitor mode, want unchanged", before, after)
		}

		// Monitor off: the stack answers.
		if err := SetMonitor(name, false); err != nil {
			t.Fatalf("SetMonitor off: %v", err)
		}
		if on, err := MonitorEnabled(name); err != nil || on {
			t.Fatalf("MonitorEnabled after off = %v, %v; want false", on, err)
		}
		if q, err := findClsact(mustLinkByName(t, name)); err != nil || q != nil {
			t.Errorf("clsact qdisc left behind (%v, %v)", q, err)
		}
		if v := disableIPv6Value(t, name); v != "0" {
			t.Errorf("disable_ipv6 = %s out of monitor mode, want 0", v)
		}
		if err := SetMonitor(name, false); err != nil {
			t.Errorf("SetMonitor off twice: %v", err)
		}
		before = icmpInEchos(t)
		if err := writeTAP(q, icmpEchoFrame(l.MAC, peerMAC, peer, local, 0x200)); err != nil {
			t.Fatalf("write an echo request: %v", err)
		}
		// IPv6 is on again: MLD, router and neighbour solicitations may
		// come out first.
		if f, _ := readFrames(t, q, 2*time.Second, isReply(0x200)); f == nil {
			t.Errorf("no echo reply out of the TAP with monitor mode off")
		}
		if after := icmpInEchos(t); after != before+1 {
			t.Errorf("InEchos went from %d to %d, want +1", before, after)
		}

		// With tcx, monitor mode adds no qdisc, so an empty clsact one
		// is somebody else's, and off leaves it.
		if tcx {
			if _, added, err := ensureClsact(mustLinkByName(t, name)); err != nil || !added {
				t.Fatalf("add an empty clsact qdisc: added %v, %v", added, err)
			}
			for _, on := range []bool{true, false} {
				if err := SetMonitor(name, on); err != nil {
					t.Fatalf("SetMonitor %v beside an empty clsact qdisc: %v", on, err)
				}
			}
			if q, err := findClsact(mustLinkByName(t, name)); err != nil || q == nil {
				t.Errorf("monitor mode at tcx removed an empty clsact qdisc it did not add (%v)", err)
			}
		}

		// On runs ahead of somebody else's ingress filter (and tcx
		// program) there before it; off keeps them, and the clsact qdisc
		// that holds the filter.
		link := mustLinkByName(t, name)
		fd, err := loadProgram(unix.BPF_PROG_TYPE_SCHED_CLS, monitorInsns[:], "someone_else")
		if err != nil {
			t.Fatalf("load a program: %v", err)
		}
		defer unix.Close(fd)
		other := &netlink.BpfFilter{
			// At ingress, where the monitor filter would be: off must
			// tell it from ours by name.
			FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Index, Parent: netlink.HANDLE_MIN_INGRESS, Protocol: unix.ETH_P_ALL},
			Fd:          fd, Name: "someone-else", DirectAction: true,
		}
		if _, _, err := ensureClsact(link); err != nil {
			t.Fatalf("clsact: %v", err)
		}
		if err := netlink.FilterAdd(other); err != nil {
			t.Fatalf("add another filter: %v", err)
		}
		if tcx {
			if err := tcxAttachFirst(l.Index, fd, unix.BPF_TCX_INGRESS); err != nil {
				t.Fatalf("attach another tcx program: %v", err)
			}
		}
		if err := SetMonitor(name, true); err != nil {
			t.Fatalf("SetMonitor on again: %v", err)
		}
		if !tcx {
			fs, err := filterList(link, netlink.HANDLE_MIN_INGRESS)
			if err != nil || len(fs) != 2 || fs[0].(*netlink.BpfFilter).Name != monitorFilterName {
				t.Errorf("ingress filters %v (%v), want ours first of two", fs, err)
			}
		}
		if err := SetMonitor(name, false); err != nil {
			t.Fatalf("SetMonitor off: %v", err)
		}
		if n := monitorCount(t, link); n != 0 {
			t.Errorf("after SetMonitor off: %d monitor programs attached, want 0", n)
		}
		if q, err := findClsact(link); err != nil || q == nil {
			t.Errorf("clsact qdisc removed although another filter is on it (%v)", err)
		}
		if fs, err := filterList(link, netlink.HANDLE_MIN_INGRESS); err != nil || len(fs) != 1 {
			t.Errorf("the other filter: %d (%v), want it kept", len(fs), err)
		}
		if ids, err := tcxProgIDs(l.Index, unix.BPF_TCX_INGRESS); err != nil || len(ids) != map[bool]int{true: 1}[tcx] {
			t.Errorf("tcx programs left: %v (%v), want the other one's alone", ids, err)
		}
		// A kernel without tcx is never asked what its tcx holds: the
		// query fails there (EINVAL), and monitor mode would with it.
		// Here a program of our name at tcx, which only a kernel with
		// tcx can have, stands for that query and must go unseen.
		if !tcx {
			attachOtherTCX(t, l.Index, monitorProgName)
			if on, err := MonitorEnabled(name); err != nil || on {
				t.Errorf("MonitorEnabled without tcx, beside an %s program at tcx = %v, %v; want false (tcx asked)", monitorProgName, on, err)
			}
		}
		if err := SetMonitor("erspan77", true); !errors.Is(err, unix.ENXIO) {
			t.Errorf("SetMonitor on a missing link: %v, want ENXIO", err)
		}
	})
}

func mustLinkByName(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

// TestLoadProgramUnderSignals: the verifier refuses with EAGAIN while a
// signal is pending for the loading thread, which Go's preemption signals
// make happen at random (a create among hundreds failed so). Here the
// loading thread is sent SIGURG (which the runtime takes and ignores when
// it did not ask for it) without pause; every load must still succeed.
func TestLoadProgramUnderSignals(t *testing.T) {
	requireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, tid := unix.Getpid(), unix.Gettid()
	var stop atomic.Bool
	done := make(chan int)
	go func() {
		sent := 0
		for ; !stop.Load() && sent < 10_000_000; sent++ {
			_ = unix.Tgkill(pid, tid, unix.SIGURG)
		}
		done <- sent
	}()
	const loads = 500
	var failed error
	for i := 0; i < loads && failed == nil; i++ {
		fd, err := loadProgram(unix.BPF_PROG_TYPE_SCHED_CLS, spanProgram(5), "erspan_span")
		if err != nil {
			failed = fmt.Errorf("load %d of %d: %w", i+1, loads, err)
			break
		}
		unix.Close(fd)
	}
	stop.Store(true)
	sent := <-done
	if failed != nil {
		t.Fatalf("%v (%d signals sent meanwhile)", failed, sent)
	}
	t.Logf("%d loads, %d signals sent meanwhile", loads, sent)
}

// TestFindClsact: what the clsact lookup finds on a device: none on a
// fresh link (even with another device's clsact in the namespace), the
// one added, with its handle and the device's index, none again once it
// is removed (the slot then holds a noop qdisc the kernel does not
// report), and EBUSY for an "ingress" qdisc, which takes the same slot and
// cannot hold our filters. How it asks (one device's slot rather than a
// dump of every qdisc, see findClsact) is a matter of cost that no result
// here shows.
func TestFindClsact(t *testing.T) {
	ns := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.do(t, func() {
		if _, _, err := ensureClsact(mustLinkByName(t, "v1")); err != nil {
			t.Fatalf("clsact on v1: %v", err)
		}
		link := mustLinkByName(t, "v0")
		if q, err := findClsact(link); err != nil || q != nil {
			t.Fatalf("fresh link: %v, %v; want none", q, err)
		}
		q, added, err := ensureClsact(link)
		if err != nil || !added {
			t.Fatalf("ensureClsact: %v (added %v)", err, added)
		}
		got, err := findClsact(link)
		if err != nil || got == nil || got.Type() != "clsact" || got.Attrs().Handle != q.Attrs().Handle || got.Attrs().LinkIndex != link.Attrs().Index {
			t.Fatalf("after adding clsact: %v, %v", got, err)
		}
		if q2, added, err := ensureClsact(link); err != nil || added || q2 == nil {
			t.Fatalf("ensureClsact again: %v, added %v, %v; want the one there", q2, added, err)
		}
		if err := netlink.QdiscDel(got); err != nil {
			t.Fatal(err)
		}
		if q, err := findClsact(link); err != nil || q != nil {
			t.Fatalf("after removing it: %v, %v; want none", q, err)
		}
		ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
		if err := netlink.QdiscAdd(ingress); err != nil {
			t.Fatal(err)
		}
		if q, err := findClsact(link); !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "ingress") {
			t.Errorf("with an ingress qdisc: %v, %v; want EBUSY naming it", q, err)
		}
	})
}

// TestMonitorProgramShared: every monitor program attached, with tcx or
// as a clsact filter, is the one program the process loaded
// (monitorProg), not a program of its own per interface, also after
// monitor mode went off and on again (the program outlives the
// attachments).
func TestMonitorProgramShared(t *testing.T) {
	ns := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.do(t, func() {
		ids := map[uint32]bool{}
		for i, tc := range []struct {
			name string
			tcx  bool
		}{{"v0", true}, {"v1", false}, {"v0", true}, {"v0", false}} {
			withMonitorTCX(tc.tcx, func() {
				if err := SetMonitor(tc.name, true); err != nil {
					t.Fatalf("SetMonitor %s: %v", tc.name, err)
				}
			})
			id := monitorProgID(t, mustLinkByName(t, tc.name))
			ids[id] = true
			if i != 1 {
				if err := SetMonitor(tc.name, false); err != nil {
					t.Fatalf("SetMonitor %s off: %v", tc.name, err)
				}
			}
		}
		if len(ids) != 1 {
			t.Errorf("the monitor filters run programs %v, want one program", ids)
		}
	})
}

// monitorProgID is the ID of the one monitor program attached to link,
// with tcx or as a filter.
func monitorProgID(t *testing.T, link netlink.Link) uint32 {
	t.Helper()
	ids := monitorIDs(t, link)
	if len(ids) != 1 {
		t.Fatalf("%s: monitor programs %v, want one", link.Attrs().Name, ids)
	}
	return ids[0]
}

// TestMonitorAttachedBefore: a monitor filter on clsact, as an erspand
// before tcx left it (or a kernel without tcx), counts as monitor mode on
// with tcx at hand: on adds no second program, off removes it and its
// qdisc. A tcx attachment goes with the device into another namespace
// (rdomain).
func TestMonitorAttachedBefore(t *testing.T) {
	ns := newTestNetns(t)
	other := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.do(t, func() {
		withMonitorTCX(false, func() {
			if err := SetMonitor("v0", true); err != nil {
				t.Fatalf("SetMonitor on (clsact): %v", err)
			}
		})
		if err := SetMonitor("v0", true); err != nil {
			t.Fatalf("SetMonitor on: %v", err)
		}
		link := mustLinkByName(t, "v0")
		if n := monitorCount(t, link); n != 1 {
			t.Fatalf("%d monitor programs, want the clsact one alone", n)
		}
		if fs, err := monitorFilters(link); err != nil || len(fs) != 1 {
			t.Fatalf("%d monitor filters (%v), want the clsact one", len(fs), err)
		}
		if err := SetMonitor("v0", false); err != nil {
			t.Fatalf("SetMonitor off: %v", err)
		}
		if on, err := MonitorEnabled("v0"); err != nil || on {
			t.Errorf("MonitorEnabled after off = %v, %v; want false", on, err)
		}
		if q, err := findClsact(link); err != nil || q != nil {
			t.Errorf("clsact qdisc left behind (%v, %v)", q, err)
		}

		if err := SetMonitor("v0", true); err != nil {
			t.Fatalf("SetMonitor on: %v", err)
		}
	})
	runIP(t, "-n", ns.name, "link", "set", "v0", "netns", other.name)
	other.do(t, func() {
		if on, err := MonitorEnabled("v0"); err != nil || !on {
			t.Errorf("MonitorEnabled in the namespace moved to = %v, %v; want true", on, err)
		}
	})
}

// TestNoTCX: the kernel's answer to an attach type it does not know,
// which is how one before 6.6 answers tcx's query, is EINVAL, and tcxHas
// says no (here an attach type no kernel has stands in for tcx's); for
// tcx's own it says yes here (this kernel, 6.18, has tcx).
func TestNoTCX(t *testing.T) {
	ns := newTestNetns(t)
	ns.do(t, func() {
		const unknown = 0x7fff
		lo := mustLinkByName(t, "lo").Attrs().Index
		if _, err := tcxProgIDs(lo, unknown); !errors.Is(err, unix.EINVAL) {
			t.Errorf("query: %v, want EINVAL", err)
		}
		if tcxHas(unknown) {
			t.Errorf("tcxHas(%#x) = true", unknown)
		}
		if !tcxSupported() {
			t.Errorf("tcxSupported() = false on a kernel with tcx")
		}
	})
}

// TestMonitorWithoutSysAdmin: without CAP_SYS_ADMIN the kernel shows no
// other program's name (BPF_PROG_GET_FD_BY_ID), so that tcx programs
// cannot be told apart: monitor mode attaches the clsact filter instead.
// One it attached with tcx before (with the capability) it knows by its
// ID: on again adds nothing, off removes it. Somebody else's tcx program
// stays throughout.
func TestMonitorWithoutSysAdmin(t *testing.T) {
	ns := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	var index int
	ns.do(t, func() {
		index = mustLinkByName(t, "v0").Attrs().Index
		attachOtherTCX(t, index, "someone_else")
		if err := SetMonitor("v1", true); err != nil { // with tcx
			t.Fatalf("SetMonitor v1 on: %v", err)
		}
	})
	// (Only t.Errorf on the capability-less thread: t.Fatal and setns
	// would not do there.)
	withoutCaps(t, ns, []uint{unix.CAP_SYS_ADMIN}, func() {
		if _, err := progNameByID(1); !errors.Is(err, unix.EPERM) {
			t.Errorf("reading a program by ID without CAP_SYS_ADMIN: %v, want EPERM (else this test tests nothing)", err)
		}
		v0, err := netlink.LinkByName("v0")
		if err != nil {
			t.Errorf("v0: %v", err)
			return
		}
		for i, on := range []bool{true, true, false, false} {
			if err := SetMonitor("v0", on); err != nil {
				t.Errorf("step %d: SetMonitor %v: %v", i, on, err)
			}
			fs, err := monitorFilters(v0)
			if want := map[bool]int{true: 1}[on]; err != nil || len(fs) != want {
				t.Errorf("step %d: %d monitor filters (%v), want %d", i, len(fs), err, want)
			}
			if ids, err := tcxProgIDs(index, unix.BPF_TCX_INGRESS); err != nil || len(ids) != 1 {
				t.Errorf("step %d: tcx programs %v (%v), want the other one alone", i, ids, err)
			}
		}
		v1, err := netlink.LinkByName("v1")
		if err != nil {
			t.Errorf("v1: %v", err)
			return
		}
		for i, on := range []bool{true, false} {
			if err := SetMonitor("v1", on); err != nil {
				t.Errorf("v1 step %d: SetMonitor %v: %v", i, on, err)
			}
			ids, err := tcxProgIDs(v1.Attrs().Index, unix.BPF_TCX_INGRESS)
			if want := map[bool]int{true: 1}[on]; err != nil || len(ids) != want {
				t.Errorf("v1 step %d: tcx programs %v (%v), want %d", i, ids, err, want)
			}
			if fs, err := monitorFilters(v1); err != nil || len(fs) != 0 {
				t.Errorf("v1 step %d: %d monitor filters (%v), want none", i, len(fs), err)
			}
		}
	})
}

// TestMonitorTCXDetails: with tcx, the monitor program runs ahead of a
// program attached before it; one an earlier erspand attached (another
// program of our name) counts as on, and goes at off; an ingress qdisc,
// which only the clsact filter cannot live with, is no obstacle; and the
// program list is read whole however long it is.
func TestMonitorTCXDetails(t *testing.T) {
	ns := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.do(t, func() {
		link := mustLinkByName(t, "v0")
		index := link.Attrs().Index
		attach := func(name string) { t.Helper(); attachOtherTCX(t, index, name) }
		ids := func() []uint32 {
			t.Helper()
			ids, err := tcxProgIDs(index, unix.BPF_TCX_INGRESS)
			if err != nil {
				t.Fatal(err)
			}
			return ids
		}
		ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
		if err := netlink.QdiscAdd(ingress); err != nil {
			t.Fatal(err)
		}

		attach("someone_else")
		if err := SetMonitor("v0", true); err != nil {
			t.Fatalf("SetMonitor on beside an ingress qdisc: %v", err)
		}
		own, _ := ownMonitorProg()
		if got := ids(); len(got) != 2 || got[0] != own {
			t.Errorf("tcx programs %v, want ours (%d) first of two", got, own)
		}
		if err := SetMonitor("v0", false); err != nil {
			t.Fatalf("SetMonitor off beside an ingress qdisc: %v", err)
		}

		// An earlier erspand's program, and (as from a kernel or a run
		// without tcx) its filter too: on adds nothing, off takes both,
		// and the programs it opened by ID are closed again.
		attach(monitorProgName)
		if err := netlink.QdiscDel(ingress); err != nil {
			t.Fatal(err)
		}
		if err := attachMonitorFilter(link, ownFD(t)); err != nil {
			t.Fatal(err)
		}
		fds := openFDs(t)
		if err := SetMonitor("v0", true); err != nil {
			t.Fatalf("SetMonitor on: %v", err)
		}
		if got := ids(); len(got) != 2 || monitorCount(t, link) != 2 {
			t.Errorf("after on with an earlier erspand's program and filter: tcx %v, %d of ours; want no more", got, monitorCount(t, link))
		}
		if err := SetMonitor("v0", false); err != nil {
			t.Fatalf("SetMonitor off: %v", err)
		}
		if got := ids(); len(got) != 1 || monitorCount(t, link) != 0 {
			t.Errorf("after off: tcx %v, %d of ours; want the other one alone", got, monitorCount(t, link))
		}
		if n := openFDs(t); n != fds {
			t.Errorf("%d descriptors open after on and off, %d before", n, fds)
		}
		if err := netlink.QdiscAdd(ingress); err != nil {
			t.Fatal(err)
		}

		// More than tcxProgIDs first has room for (8).
		for i := range 10 {
			attach(fmt.Sprintf("other_%d", i))
		}
		if got := ids(); len(got) != 11 {
			t.Errorf("%d tcx programs listed, want 11", len(got))
		}

		withMonitorTCX(false, func() {
			if err := SetMonitor("v0", true); !errors.Is(err, unix.EBUSY) {
				t.Errorf("SetMonitor with the clsact filter beside an ingress qdisc: %v, want EBUSY", err)
			}
		})
	})
}

// ownFD is the fd of this process's monitor program, loading it.
func ownFD(t *testing.T) int {
	t.Helper()
	fd, err := monitorProgFD()
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestMonitorRollback: when monitor mode cannot silence IPv6 on the link
// (here a link whose MTU under 1280 took its IPv6 settings away), the
// program attached a moment before is detached again: monitor mode is
// either on whole or not at all. So is the clsact qdisc added for a
// filter the kernel then refuses (here for want of a program).
func TestMonitorRollback(t *testing.T) {
	ns := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "v0", "mtu", "1200", "type", "veth", "peer", "name", "v1")
	ns.do(t, func() {
		if _, err := os.Stat("/proc/sys/net/ipv6/conf/v0"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("v0 with MTU 1200 still has IPv6 settings (%v): this test would test nothing", err)
		}
		if err := SetMonitor("v0", true); err == nil {
			t.Fatal("SetMonitor on succeeded without disable_ipv6")
		}
		if n := monitorCount(t, mustLinkByName(t, "v0")); n != 0 {
			t.Errorf("%d monitor programs left after the failed on, want 0", n)
		}
		v1 := mustLinkByName(t, "v1")
		if err := attachMonitorFilter(v1, -1); err == nil {
			t.Fatal("a monitor filter without a program attached")
		}
		if q, err := findClsact(v1); err != nil || q != nil {
			t.Errorf("clsact qdisc left after the filter was refused (%v, %v)", q, err)
		}
	})
}
