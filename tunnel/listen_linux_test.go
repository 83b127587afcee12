package tunnel

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestListenGREFailureReleasesGuard: a receive socket that fails to open
// gives back its guard, the shared send socket it took a reference to:
// otherwise that raw GRE socket would stay open for good, a clone per GRE
// packet for the kernel and a namespace kept alive.
func TestListenGREFailureReleasesGuard(t *testing.T) {
	ns := newTestNetns(t)
	l, err := NewLinux()
	if err != nil {
		t.Fatal(err)
	}
	l.Batch = 0 // refused by listenGRE, after the guard was taken
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
