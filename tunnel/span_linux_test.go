package tunnel

import (
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// mustSpanRule is newSpanRule, its program closed when the test ends.
func mustSpanRule(t *testing.T, tap string, tapIndex int) spanRule {
	t.Helper()
	r, err := newSpanRule(tap, tapIndex)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.close)
	return r
}

// TestSpanRulesOfPrefixNames: the span rules of erspan10, erspan1 and
// erspan2 on one bridge are told apart (one name is a prefix of another;
// erspan2's ifindex is 0x3fff above erspan1's): each is on the bridge and
// its port, and removing erspan1's leaves the others.
func TestSpanRulesOfPrefixNames(t *testing.T) {
	ns := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "br0", "type", "bridge")
	runIP(t, "-n", ns.name, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
	runIP(t, "-n", ns.name, "link", "set", "p0", "master", "br0")
	ten, one := mustSpanRule(t, "erspan10", 10), mustSpanRule(t, "erspan1", 1)
	// An ifindex 0x3fff above erspan1's: a priority folded from the
	// ifindex made the two rules one.
	far := mustSpanRule(t, "erspan2", 1+0x3fff)
	ns.do(t, func() {
		check := func(when string, want ...string) {
			t.Helper()
			if got := spanRuleNames(t, "br0", netlink.HANDLE_MIN_EGRESS); !slices.Equal(got, want) {
				t.Errorf("%s: span rules on br0's egress %v, want %v", when, got, want)
			}
			if got := spanRuleNames(t, "p0", netlink.HANDLE_MIN_INGRESS); !slices.Equal(got, want) {
				t.Errorf("%s: span rules on p0's ingress %v, want %v", when, got, want)
			}
		}
		for _, r := range []spanRule{ten, one, far} {
			if _, err := r.reconcile("br0", false, map[int]bool{}); err != nil {
				t.Fatalf("span %s: %v", r.tap, err)
			}
		}
		check("all spanning", "erspan-span-erspan1", "erspan-span-erspan10", "erspan-span-erspan2")
		// One program per span, on the bridge and its port alike.
		if br, p0 := spanProgIDs(t, "br0", netlink.HANDLE_MIN_EGRESS), spanProgIDs(t, "p0", netlink.HANDLE_MIN_INGRESS); !maps.Equal(br, p0) || len(br) != 3 {
			t.Errorf("span rule programs: br0 %v, p0 %v; want one per span, the same on both", br, p0)
		}
		if _, err := one.reconcile("br0", true, map[int]bool{}); err != nil {
			t.Fatalf("remove erspan1's span: %v", err)
		}
		check("erspan1's removed", "erspan-span-erspan10", "erspan-span-erspan2")
		for _, r := range []spanRule{ten, far} {
			if _, err := r.reconcile("br0", true, map[int]bool{}); err != nil {
				t.Fatalf("remove %s's span: %v", r.tap, err)
			}
		}
		// The clsact qdiscs the rules needed go with the last of them.
		for _, name := range []string{"br0", "p0"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if q, err := findClsact(l); q != nil || err != nil {
				t.Errorf("%s after the last span rule went: clsact %v (%v)", name, q, err)
			}
		}
	})
}

// spanRuleNames lists the names of the BPF filters on link at parent, in
// the calling thread's namespace.
func spanRuleNames(t *testing.T, link string, parent uint32) []string {
	t.Helper()
	l, err := netlink.LinkByName(link)
	if err != nil {
		t.Fatalf("%s: %v", link, err)
	}
	fs, err := filterList(l, parent)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fs {
		if b, ok := f.(*netlink.BpfFilter); ok && !slices.Contains(out, b.Name) {
			out = append(out, b.Name)
		}
	}
	slices.Sort(out)
	return out
}

// spanProgIDs returns the program id of each span rule on the link at
// parent, by rule name.
func spanProgIDs(t *testing.T, link string, parent uint32) map[string]int {
	t.Helper()
	fs, err := filterList(mustLinkByName(t, link), parent)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for _, f := range fs {
		if b, ok := f.(*netlink.BpfFilter); ok && b.Id != 0 {
			ids[b.Name] = b.Id
		}
	}
	return ids
}

// TestSpanWatchOutlivesItsSubscription: the netlink library ends a link
// subscription on any receive error (ENOBUFS when a burst of changes
// overran it). The span's watcher must then report it, subscribe again and
// keep covering ports that join the bridge, and stop must still remove
// every rule.
func TestSpanWatchOutlivesItsSubscription(t *testing.T) {
	reports := make(chan error, 16)
	ns, s := startTestSpan(t, func(err error) {
		select {
		case reports <- err:
		default:
		}
	})
	stopped := false
	defer func() {
		if !stopped {
			s.stop()
		}
	}()
	hasRule := func(link string) bool { return testSpanRuleOn(t, ns, link, netlink.HANDLE_MIN_INGRESS) }
	if !hasRule("p0") {
		t.Fatal("no span rule on the bridge's port p0 after startSpan")
	}
	var prog int
	ns.do(t, func() { prog = spanProgIDs(t, "p0", netlink.HANDLE_MIN_INGRESS)["erspan-span-erspan1"] })

	// End the subscription as the library does on a receive error: its
	// socket is closed under its reader.
	sub := s.sub.Load()
	sub.once.Do(func() { close(sub.done) })
	select {
	case err := <-reports:
		t.Logf("reported: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the end of the link subscription was not reported")
	}

	// A port joining now must be covered by the new subscription.
	runIP(t, "-n", ns.name, "link", "add", "p2", "type", "veth", "peer", "name", "p3")
	runIP(t, "-n", ns.name, "link", "set", "p2", "master", "br0")
	awaitSpanRule(t, ns, "p2 joined br0 after the subscription ended", "p2", netlink.HANDLE_MIN_INGRESS, true)
	if s.sub.Load() == sub {
		t.Error("the watcher kept the ended subscription")
	}

	stopped = true
	if err := s.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for _, l := range []string{"p0", "p2"} {
		if hasRule(l) {
			t.Errorf("span rule left on %s after stop", l)
		}
	}
	var egress []string
	ns.do(t, func() { egress = spanRuleNames(t, "br0", netlink.HANDLE_MIN_EGRESS) })
	if slices.Contains(egress, "erspan-span-erspan1") {
		t.Error("span rule left on br0's egress after stop")
	}
	// Nothing holds the span's program any more: not the rules, not the
	// span's own descriptor (its program loaded once, closed by stop).
	awaitProgGone(t, prog)
}

// awaitProgGone waits up to 5 s for the kernel to have freed eBPF
// program id (filters drop their reference after an RCU grace period).
func awaitProgGone(t *testing.T, id int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		fd, err := progByID(uint32(id))
		if errors.Is(err, unix.ENOENT) {
			return
		}
		if err == nil {
			unix.Close(fd)
		}
		if time.Now().After(deadline) {
			t.Fatalf("eBPF program %d still loaded 5 s after the span stopped (%v)", id, err)
		}
	}
}

// TestSpanWatchFollowsPorts: after the first reconcile the watcher acts on
// the links that changed: a port joining gets the rule, a port leaving
// loses it, a removed port (ip link del) is forgotten without an error and
// ports joining after it still get the rule, links that are not ports
// never get it, and a bridge made again is covered again.
func TestSpanWatchFollowsPorts(t *testing.T) {
	var reports spanReports
	ns, s := startTestSpan(t, reports.add)
	stopped := false
	defer func() {
		if !stopped {
			s.stop()
		}
	}()
	hasRule := func(link string, parent uint32) bool { return testSpanRuleOn(t, ns, link, parent) }
	await := func(what, link string, parent uint32, want bool) {
		t.Helper()
		awaitSpanRule(t, ns, what, link, parent, want)
	}
	noReports := func(when string) {
		t.Helper()
		if got := reports.take(); len(got) > 0 {
			t.Errorf("%s: reported %v", when, got)
		}
	}

	runIP(t, "-n", ns.name, "link", "add", "p2", "type", "veth", "peer", "name", "p3")
	runIP(t, "-n", ns.name, "link", "set", "p2", "master", "br0")
	await("p2 joined", "p2", netlink.HANDLE_MIN_INGRESS, true)
	runIP(t, "-n", ns.name, "link", "set", "p0", "nomaster")
	await("p0 left", "p0", netlink.HANDLE_MIN_INGRESS, false)
	// p0 back in, then removed: its rule goes with it, nothing to report.
	runIP(t, "-n", ns.name, "link", "set", "p0", "master", "br0")
	await("p0 joined again", "p0", netlink.HANDLE_MIN_INGRESS, true)
	runIP(t, "-n", ns.name, "link", "del", "p0")
	// Links that are not ports, made after the span, get nothing; p4,
	// made after them and put in the bridge, is the marker that the
	// watcher has seen them all.
	for i := range 10 {
		runIP(t, "-n", ns.name, "link", "add", fmt.Sprintf("d%d", i), "type", "veth", "peer", "name", fmt.Sprintf("e%d", i))
	}
	runIP(t, "-n", ns.name, "link", "add", "p4", "type", "veth", "peer", "name", "p5")
	runIP(t, "-n", ns.name, "link", "set", "p4", "master", "br0")
	await("p4 joined", "p4", netlink.HANDLE_MIN_INGRESS, true)
	for _, l := range []string{"d0", "e9", "p3", "p5"} {
		if hasRule(l, netlink.HANDLE_MIN_INGRESS) {
			t.Errorf("%s is no port of br0 and has the span rule", l)
		}
	}
	noReports("ports joining, leaving, removed")

	// The bridge removed (its ports' rules go with it; the watcher says
	// the bridge is gone) and made again: its egress and its new port are
	// covered.
	runIP(t, "-n", ns.name, "link", "del", "br0")
	// Until it is back: its former ports lose the rule, and the watcher
	// says the bridge is gone, once.
	await("br0 removed, its former port p2", "p2", netlink.HANDLE_MIN_INGRESS, false)
	await("br0 removed, its former port p4", "p4", netlink.HANDLE_MIN_INGRESS, false)
	reports.awaitENODEV(t, "br0 removed")
	runIP(t, "-n", ns.name, "link", "add", "br0", "type", "bridge")
	await("br0 made again", "br0", netlink.HANDLE_MIN_EGRESS, true)
	runIP(t, "-n", ns.name, "link", "set", "p2", "master", "br0")
	await("p2 in the new br0", "p2", netlink.HANDLE_MIN_INGRESS, true)
	if hasRule("p4", netlink.HANDLE_MIN_INGRESS) {
		t.Error("p4, a port of the removed br0 only, kept the span rule")
	}
	noReports("br0 made again")

	// A port with the rule removed (its rule goes with it), then p6
	// joining: once p6 has its rule the watcher has seen p2's removal,
	// reported before. The watcher must have forgotten p2: its record
	// of ports was last made afresh when br0 came back, before p2 went.
	index := func(link string) (i int) {
		t.Helper()
		ns.do(t, func() { i = mustLinkByName(t, link).Attrs().Index })
		return i
	}
	p2 := index("p2")
	runIP(t, "-n", ns.name, "link", "del", "p2")
	runIP(t, "-n", ns.name, "link", "add", "p6", "type", "veth", "peer", "name", "p7")
	runIP(t, "-n", ns.name, "link", "set", "p6", "master", "br0")
	await("p6 joined after p2 was removed", "p6", netlink.HANDLE_MIN_INGRESS, true)
	noReports("a port removed")
	p6 := index("p6")
	// The watcher ended (stop's first half), its ports are there to read.
	stopped = true
	close(s.done)
	<-s.stopped
	if want := map[int]bool{p6: true}; !maps.Equal(s.ports, want) {
		t.Errorf("the watcher's ports %v, want %v: p2 (%d), removed, is not forgotten", s.ports, want, p2)
	}
	if err := s.reconcile(true); err != nil { // stop's second half
		t.Errorf("stop: %v", err)
	}
	s.rule.close()
	if hasRule("p6", netlink.HANDLE_MIN_INGRESS) {
		t.Error("span rule left on p6 after stop")
	}
}

// TestSpanWatchBurstInOrder: the watcher takes a burst of link changes in
// order. A port that leaves and joins again in one burst (ip -batch) keeps
// the rule; a link that joins and leaves in one has none. Each round ends
// with a marker link joining, so that once it has its rule the watcher
// has taken the burst before it.
func TestSpanWatchBurstInOrder(t *testing.T) {
	ns, s := startTestSpan(t, func(err error) { t.Errorf("span reported %v", err) })
	defer s.stop()
	runIP(t, "-n", ns.name, "link", "add", "p2", "type", "veth", "peer", "name", "p3")
	batch := func(cmds string) {
		t.Helper()
		cmd := exec.Command("ip", "-n", ns.name, "-batch", "-")
		cmd.Stdin = strings.NewReader(cmds)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ip -batch %q: %v: %s", cmds, err, out)
		}
	}
	for round := range 5 {
		batch("link set p0 nomaster\nlink set p0 master br0\nlink set p2 master br0\nlink set p2 nomaster\n")
		marker := fmt.Sprintf("m%d", round)
		runIP(t, "-n", ns.name, "link", "add", marker, "type", "veth", "peer", "name", marker+"p")
		runIP(t, "-n", ns.name, "link", "set", marker, "master", "br0")
		awaitSpanRule(t, ns, "round "+marker, marker, netlink.HANDLE_MIN_INGRESS, true)
		if !testSpanRuleOn(t, ns, "p0", netlink.HANDLE_MIN_INGRESS) {
			t.Fatalf("round %d: p0 left and joined again in one burst and lost the span rule", round)
		}
		if testSpanRuleOn(t, ns, "p2", netlink.HANDLE_MIN_INGRESS) {
			t.Fatalf("round %d: p2 joined and left in one burst and kept the span rule", round)
		}
	}
}

// spanReports collects what a test span reports.
type spanReports struct {
	mu   sync.Mutex
	errs []error
}

func (r *spanReports) add(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

// take returns the reports so far and forgets them.
func (r *spanReports) take() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	errs := r.errs
	r.errs = nil
	return errs
}

// awaitENODEV waits up to 5 s for a report, then fails t unless the
// reports are one ENODEV (the bridge gone); it takes them.
func (r *spanReports) awaitENODEV(t *testing.T, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		r.mu.Lock()
		n := len(r.errs)
		r.mu.Unlock()
		if n > 0 {
			break
		}
	}
	if got := r.take(); len(got) != 1 || !errors.Is(got[0], unix.ENODEV) {
		t.Errorf("%s: reported %v, want one ENODEV", what, got)
	}
}

// startTestSpan makes bridge br0 with port p0 (a veth to p1) in a new
// namespace and starts erspan1's span of it, its reports passed to
// report. The caller stops it.
func startTestSpan(t *testing.T, report func(error)) (*testNetns, *span) {
	t.Helper()
	ns := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "br0", "type", "bridge")
	runIP(t, "-n", ns.name, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
	runIP(t, "-n", ns.name, "link", "set", "p0", "master", "br0")
	home, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	// The span keeps home for the daemon's own namespace (ns ""): open
	// until the test ends.
	t.Cleanup(func() { home.Close() })
	rule, err := newSpanRule("erspan1", 1)
	if err != nil {
		t.Fatal(err)
	}
	s, err := startSpan(home, ns.name, "br0", rule, report)
	if err != nil {
		rule.close()
		t.Fatal(err)
	}
	return ns, s
}

// testSpanRuleOn reports whether erspan1's span rule is on link at parent.
func testSpanRuleOn(t *testing.T, ns *testNetns, link string, parent uint32) bool {
	t.Helper()
	var got []string
	ns.do(t, func() { got = spanRuleNames(t, link, parent) })
	return slices.Contains(got, "erspan-span-erspan1")
}

// awaitSpanRule waits up to 5 s for erspan1's span rule to be on link at
// parent (want) or off it, and fails the test with what otherwise.
func awaitSpanRule(t *testing.T, ns *testNetns, what, link string, parent uint32, want bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); testSpanRuleOn(t, ns, link, parent) != want; {
		if time.Now().After(deadline) {
			t.Fatalf("%s: span rule on %s is %v, want %v after 5 s", what, link, !want, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSpanWatchBridgeRenamed: the span follows the bridge by name. Renamed
// (the link with its ifindex no longer called so), its ports lose the
// rule and the watcher says the bridge is gone; named so again, they get
// it back.
func TestSpanWatchBridgeRenamed(t *testing.T) {
	var reports spanReports
	ns, s := startTestSpan(t, reports.add)
	defer s.stop()
	awaitSpanRule(t, ns, "started", "p0", netlink.HANDLE_MIN_INGRESS, true)
	runIP(t, "-n", ns.name, "link", "set", "br0", "name", "br9")
	awaitSpanRule(t, ns, "br0 renamed br9, its port p0", "p0", netlink.HANDLE_MIN_INGRESS, false)
	// Reported once the reconcile that took the rule off returns.
	reports.awaitENODEV(t, "br0 renamed")
	runIP(t, "-n", ns.name, "link", "set", "br9", "name", "br0")
	awaitSpanRule(t, ns, "br9 renamed br0 again, its port p0", "p0", netlink.HANDLE_MIN_INGRESS, true)
}

// TestSpanApplyEntersOnlyWhenNeeded: apply enters the bridge's
// namespace only for a burst that adds a rule or takes one off. The
// span's namespace here does not exist, so entering it fails: a burst
// that needs nothing must succeed and leave the ports as they should be,
// every other must fail. Nothing else sees this: the end-to-end tests
// pass whether the namespace is entered for every burst or not.
func TestSpanApplyEntersOnlyWhenNeeded(t *testing.T) {
	const br, port, other = 3, 5, 7
	update := func(typ uint16, family uint8, index, master int, name string) netlink.LinkUpdate {
		var u netlink.LinkUpdate
		u.Header.Type = typ
		u.Family = family
		u.Index = int32(index)
		u.Link = &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index, MasterIndex: master, Name: name}}
		return u
	}
	newLink := func(index, master int) netlink.LinkUpdate {
		return update(unix.RTM_NEWLINK, unix.AF_UNSPEC, index, master, fmt.Sprintf("l%d", index))
	}
	delLink := func(index int, family uint8) netlink.LinkUpdate {
		return update(unix.RTM_DELLINK, family, index, 0, fmt.Sprintf("l%d", index))
	}
	for _, c := range []struct {
		name   string
		burst  []netlink.LinkUpdate
		enters bool
		ports  map[int]bool // after a burst that does not enter
	}{
		{"a port's carrier, a link outside the bridge, the bridge's MTU",
			[]netlink.LinkUpdate{newLink(port, br), newLink(other, 0),
				update(unix.RTM_NEWLINK, unix.AF_UNSPEC, br, 0, "br0")},
			false, map[int]bool{port: true}},
		{"the bridge's own report of itself (its master its own index)",
			[]netlink.LinkUpdate{update(unix.RTM_NEWLINK, unix.AF_BRIDGE, br, br, "br0")},
			false, map[int]bool{port: true}},
		{"the bridge's own report of a port leaving it",
			[]netlink.LinkUpdate{delLink(port, unix.AF_BRIDGE)}, false, map[int]bool{port: true}},
		{"a port removed", []netlink.LinkUpdate{delLink(port, unix.AF_UNSPEC)}, false, map[int]bool{}},
		{"a link joining", []netlink.LinkUpdate{newLink(other, br)}, true, nil},
		{"a port leaving", []netlink.LinkUpdate{newLink(port, 0)}, true, nil},
		{"a port removed, then made again as a port",
			[]netlink.LinkUpdate{newLink(port, br), delLink(port, unix.AF_UNSPEC), newLink(port, br)}, true, nil},
		{"a link joining, then a port's carrier",
			[]netlink.LinkUpdate{newLink(other, br), newLink(port, br)}, true, nil},
		{"the bridge renamed (a whole reconcile)",
			[]netlink.LinkUpdate{update(unix.RTM_NEWLINK, unix.AF_UNSPEC, br, 0, "br1")}, true, nil},
	} {
		s := &span{ns: "erspan-test-no-such-namespace", bridge: "br0", brIndex: br, ports: map[int]bool{port: true}}
		err := s.apply(c.burst)
		switch {
		case c.enters && err == nil:
			t.Errorf("%s: applied without entering the bridge's namespace", c.name)
		case !c.enters && err != nil:
			t.Errorf("%s: entered the bridge's namespace, or failed: %v", c.name, err)
		case !c.enters && !maps.Equal(s.ports, c.ports):
			t.Errorf("%s: ports %v, want %v", c.name, s.ports, c.ports)
		}
	}
}
