package tunnel

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestListenFailureReleasesGuard: a receive socket that fails to open
// leaves no guard behind, no shared send socket referenced: otherwise that
// raw GRE socket would stay open for good, a clone per GRE packet for the
// kernel and a namespace kept alive. A capture takes its guards before it
// opens (a missing device fails after that); ListenGRE takes one only for
// a socket that opened (batch 0 fails before).
func TestListenFailureReleasesGuard(t *testing.T) {
	ns := newTestNetns(t)
	for _, c := range []struct {
		name   string
		listen func(l *Linux) (Socket, error)
		want   error
	}{
		{"capture on a missing device", func(l *Linux) (Socket, error) { return l.ListenCapture(ns.name, "nosuch0") }, unix.ENODEV},
		{"GRE with batch 0", func(l *Linux) (Socket, error) { l.Batch = 0; return l.ListenGRE(ns.name, 4) }, unix.EINVAL},
	} {
		l, err := NewLinux()
		if err != nil {
			t.Fatal(err)
		}
		if s, err := c.listen(l); !errors.Is(err, c.want) {
			if s != nil {
				s.Close()
			}
			t.Fatalf("%s: %v, want %v", c.name, err, c.want)
		}
		l.senders.mu.Lock()
		open := len(l.senders.m)
		l.senders.mu.Unlock()
		if open != 0 {
			t.Errorf("%s: %d shared send sockets still open after the failure, want 0", c.name, open)
		}
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
