package tunnel

import (
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestSpanRulesOfPrefixNames: the span rules of erspan10 and erspan1 on
// one bridge are told apart (one name is a prefix of the other): adding
// erspan1's after erspan10's puts it on the bridge and its port, and
// removing it leaves erspan10's.
func TestSpanRulesOfPrefixNames(t *testing.T) {
	ns := newTestNetns(t)
	runIP(t, "-n", ns.name, "link", "add", "br0", "type", "bridge")
	runIP(t, "-n", ns.name, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
	runIP(t, "-n", ns.name, "link", "set", "p0", "master", "br0")
	ten, one := spanRule{tap: "erspan10", tapIndex: 10}, spanRule{tap: "erspan1", tapIndex: 1}
	ns.do(t, func() {
		names := func(link string, parent uint32) []string {
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
		check := func(when string, want ...string) {
			t.Helper()
			if got := names("br0", netlink.HANDLE_MIN_EGRESS); !slices.Equal(got, want) {
				t.Errorf("%s: span rules on br0's egress %v, want %v", when, got, want)
			}
			if got := names("p0", netlink.HANDLE_MIN_INGRESS); !slices.Equal(got, want) {
				t.Errorf("%s: span rules on p0's ingress %v, want %v", when, got, want)
			}
		}
		for _, r := range []spanRule{ten, one} {
			if err := r.reconcile("br0", false); err != nil {
				t.Fatalf("span %s: %v", r.tap, err)
			}
		}
		check("both spanning", "erspan-span-erspan1", "erspan-span-erspan10")
		if err := one.reconcile("br0", true); err != nil {
			t.Fatalf("remove erspan1's span: %v", err)
		}
		check("erspan1's removed", "erspan-span-erspan10")
	})
}
