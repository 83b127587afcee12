package tunnel

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestListenGREFailureReleasesGuard: a receive socket that fails to open
// leaves no guard behind, no shared send socket referenced: otherwise that
// raw GRE socket would stay open for good, a clone per GRE packet for the
// kernel and a namespace kept alive.
func TestListenGREFailureReleasesGuard(t *testing.T) {
	ns := newTestNetns(t)
	l, err := NewLinux()
	if err != nil {
		t.Fatal(err)
	}
	l.Batch = 0 // refused by listenGRE
	if s, err := l.ListenGRE(ns.name, 4); !errors.Is(err, unix.EINVAL) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("ListenGRE with batch 0: %v, want EINVAL", err)
	}
	l.senders.mu.Lock()
	open := len(l.senders.m)
	l.senders.mu.Unlock()
	if open != 0 {
		t.Errorf("%d shared send sockets still open after the failed ListenGRE, want 0", open)
	}
}

// TestLinuxRing: Linux.Ring (erspand --rx-ring) is on in NewLinux's
// defaults, and ListenGRE's sockets then read an eBPF ring; off, they read
// with recvmmsg, and RingError has nothing to say.
func TestLinuxRing(t *testing.T) {
	ns := newTestNetns(t)
	l, err := NewLinux()
	if err != nil {
		t.Fatal(err)
	}
	for _, ring := range []bool{true, false} {
		if !ring {
			l.Ring = false
		} // else NewLinux's default
		for _, family := range []int{4, 6} {
			sock, err := l.ListenGRE(ns.name, family)
			if err != nil {
				t.Fatalf("ListenGRE (ring %v): %v", ring, err)
			}
			_, isRing := sock.(*greRing)
			s, isRecvmmsg := sock.(*GRESocket)
			if isRing != ring || isRecvmmsg == ring || (isRecvmmsg && s.RingError() != nil) {
				t.Errorf("Linux.Ring %v, IPv%d: a %T; want the ring on by default, recvmmsg when off, with no RingError", ring, family, sock)
			}
			sock.Close()
		}
	}
}
