package tunnel

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
)

// netnsDir is where iproute2 keeps named network namespaces (`ip netns`).
const netnsDir = "/run/netns"

// CheckNamespace returns an error wrapping ENOENT when there is no network
// namespace called name ("" is the daemon's own, which always exists).
func CheckNamespace(name string) error {
	if name == "" {
		return nil
	}
	if _, err := os.Stat(filepath.Join(netnsDir, name)); err != nil {
		return fmt.Errorf("network namespace %s: %w", name, err)
	}
	return nil
}

// openNamespace returns a handle of network namespace name, home for ""
// (the daemon's own, opened by the caller), and the function that closes
// what it opened.
func openNamespace(home netns.NsHandle, name string) (netns.NsHandle, func(), error) {
	if name == "" {
		return home, func() {}, nil
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		return 0, nil, fmt.Errorf("network namespace %s: %w", name, err)
	}
	return h, func() { h.Close() }, nil
}

// inNamespace runs fn on an OS thread inside network namespace name ("" =
// the daemon's own, run directly). Sockets fn makes stay in that namespace
// after it returns; netlink requests and /proc/sys/net act on it.
//
// The thread is locked and never unlocked: when the goroutine ends, Go
// destroys the thread rather than hand a thread in a foreign namespace to
// other goroutines (design.md, Interfaces).
func inNamespace(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, closeNS, err := openNamespace(0, name)
		if err != nil {
			errc <- err
			return
		}
		defer closeNS()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
