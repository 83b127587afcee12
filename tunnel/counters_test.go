package tunnel

import (
	"sync/atomic"
	"testing"
	"unsafe"
)

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
