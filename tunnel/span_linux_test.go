package tunnel

import (
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestSpanRulesOfPrefixNames: the span rules of erspan10, erspan1 and
// erspan2 on one bridge are told apart (one name is a prefix of another;
// erspan2's ifindex is 0x3fff above erspan1's): each is on the bridge and
// its port, and removing erspan1's leaves the others.
func TestSpanRulesOfPrefixNames(t *testing.T) {
	ns := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "br0", "type", "bridge")
	runIP(t, "-n", ns.name, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
	runIP(t, "-n", ns.name, "link", "set", "p0", "master", "br0")
	ten, one := spanRule{tap: "erspan10", tapIndex: 10}, spanRule{tap: "erspan1", tapIndex: 1}
	// An ifindex 0x3fff above erspan1's: a priority folded from the
	// ifindex made the two rules one.
	far := spanRule{tap: "erspan2", tapIndex: 1 + 0x3fff}
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
			if err := r.reconcile("br0", false); err != nil {
				t.Fatalf("span %s: %v", r.tap, err)
			}
		}
		check("all spanning", "erspan-span-erspan1", "erspan-span-erspan10", "erspan-span-erspan2")
		if err := one.reconcile("br0", true); err != nil {
			t.Fatalf("remove erspan1's span: %v", err)
		}
		check("erspan1's removed", "erspan-span-erspan10", "erspan-span-erspan2")
		for _, r := range []spanRule{ten, far} {
			if err := r.reconcile("br0", true); err != nil {
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
		t.Fatal(err)
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

// TestSpanWatchOutlivesItsSubscription: the netlink library ends a link
// subscription on any receive error (ENOBUFS when a burst of changes
// overran it). The span's watcher must then report it, subscribe again and
// keep covering ports that join the bridge, and stop must still remove
// every rule.
func TestSpanWatchOutlivesItsSubscription(t *testing.T) {
	ns := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "br0", "type", "bridge")
	runIP(t, "-n", ns.name, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
	runIP(t, "-n", ns.name, "link", "set", "p0", "master", "br0")
	home, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer home.Close()
	reports := make(chan error, 16)
	s, err := startSpan(home, ns.name, "br0", spanRule{tap: "erspan1", tapIndex: 1}, func(err error) {
		select {
		case reports <- err:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			s.stop()
		}
	}()
	const rule = "erspan-span-erspan1"
	hasRule := func(link string) bool {
		var got []string
		ns.do(t, func() { got = spanRuleNames(t, link, netlink.HANDLE_MIN_INGRESS) })
		return slices.Contains(got, rule)
	}
	if !hasRule("p0") {
		t.Fatal("no span rule on the bridge's port p0 after startSpan")
	}

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
	deadline := time.Now().Add(5 * time.Second)
	for !hasRule("p2") {
		if time.Now().After(deadline) {
			t.Fatal("port p2 joined br0 after the subscription ended and got no span rule within 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	if slices.Contains(egress, rule) {
		t.Error("span rule left on br0's egress after stop")
	}
}
