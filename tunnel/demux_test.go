package tunnel

import (
	"sync/atomic"
	"testing"
	"unsafe"
)

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

// TestIfStatsLayout: the counters a frame taken adds to are one cache
// line, whatever address the allocator gives (several objects, kept
// alive so that each has its own), and the tx counters, which another
// goroutine writes, are not on it.
func TestIfStatsLayout(t *testing.T) {
	const line = 64
	all := make([]*ifStats, 64)
	for i := range all {
		s := newIfStats()
		all[i] = s
		first := uintptr(unsafe.Pointer(&s.rxPackets))
		for name, p := range map[string]*atomic.Uint64{"rxBytes": &s.rxBytes, "rxErrors": &s.rxErrors,
			"rxTruncated": &s.rxTruncated, "rxCaptureOnly": &s.rxCaptureOnly,
			"typeI": &s.typeI, "typeII": &s.typeII, "typeIII": &s.typeIII} {
			if a := uintptr(unsafe.Pointer(p)); a/line != first/line {
				t.Fatalf("object %d at %#x: %s is on another cache line than rxPackets", i, first, name)
			}
		}
		if first%line != 0 {
			t.Fatalf("object %d at %#x: does not start a cache line", i, first)
		}
		if a := uintptr(unsafe.Pointer(&s.txPackets)); a/line == first/line {
			t.Fatalf("object %d at %#x: txPackets shares the receive path's line", i, first)
		}
	}
}
