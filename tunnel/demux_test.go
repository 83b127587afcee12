package tunnel

import "testing"

// TestBuildTableFirstWins: two up interfaces with the same key, which
// ifconfig refuses (EADDRINUSE) but the table must survive: the first
// one keeps it, for each kind of key.
func TestBuildTableFirstWins(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"exact", Config{Up: true, Src: local, Dst: remote, VNetID: 7}},
		{"session-only", Config{Up: true, Src: local, VNetID: 7}},
		{"catch-all", Config{Up: true, Src: local, VNetID: NoSession}},
	} {
		first, second := &iface{name: "first", cfg: c.cfg}, &iface{name: "second", cfg: c.cfg}
		tab := buildTable([]*iface{first, second}, "", "")
		r := tab.lookup(tab.exact[addrPair{local, remote}], local, 7)
		if r == nil || r.ifc != first {
			t.Errorf("%s: the key went to %v, want the first interface", c.name, r)
		}
	}
}

// TestRouteFlowCache: a route hands out the flow of its first run from
// its cache, without the interface's flow table (emptied here behind its
// back), and another flow from the table, which does not displace the
// first from the cache.
func TestRouteFlowCache(t *testing.T) {
	r := &route{ifc: &iface{}}
	a, b := flowKey{src: remote, session: 1}, flowKey{src: remote2, session: 1}
	fa := r.flowFor(a)
	if fa == nil || fa.key != a {
		t.Fatalf("flowFor(a) = %+v, want a new flow of key a", fa)
	}
	r.ifc.flows.m.Store(&map[flowKey]*flow{})
	if got := r.flowFor(a); got != fa {
		t.Errorf("flowFor(a) again = %p, want the cached %p", got, fa)
	}
	fb := r.flowFor(b)
	if fb == nil || fb == fa || fb.key != b {
		t.Errorf("flowFor(b) = %+v, want a flow of its own with key b", fb)
	}
	if got := r.flowFor(a); got != fa {
		t.Errorf("flowFor(a) after b = %p, want the first run's %p still cached", got, fa)
	}
}
