package tunnel

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var nsCounter atomic.Int32

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and TAPs")
	}
}

func sh(t *testing.T, cmd string) {
	t.Helper()
	out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
}

// newNS creates a network namespace that the test deletes at its end.
func newNS(t *testing.T) string {
	t.Helper()
	needRoot(t)
	name := fmt.Sprintf("erspt-u-%d-%d", os.Getpid(), nsCounter.Add(1))
	// No DAD: until link-local DAD ends, the kernel ignores neighbour
	// solicitations, which would delay IPv6 by a second.
	sh(t, "ip netns add "+name+" && ip -n "+name+" link set lo up && "+
		"ip netns exec "+name+" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name
}

// pair makes a switch and a collector namespace joined by a veth:
// 192.0.2.1 / 2001:db8::1 and 192.0.2.2 / 2001:db8::2.
func pair(t *testing.T) (sw, col string) {
	sw, col = newNS(t), newNS(t)
	sh(t, strings.Join([]string{
		"ip link add veth-sw netns " + sw + " address 02:00:00:00:00:01 type veth peer name veth-col netns " + col + " address 02:00:00:00:00:02",
		"ip netns exec " + sw + " sysctl -qw net.ipv6.conf.veth-sw.accept_dad=0",
		"ip netns exec " + col + " sysctl -qw net.ipv6.conf.veth-col.accept_dad=0",
		"ip -n " + sw + " addr add 192.0.2.1/24 dev veth-sw",
		"ip -n " + sw + " addr add 2001:db8::1/64 dev veth-sw nodad",
		"ip -n " + col + " addr add 192.0.2.2/24 dev veth-col",
		"ip -n " + col + " addr add 2001:db8::2/64 dev veth-col nodad",
		"ip -n " + sw + " link set veth-sw up",
		"ip -n " + col + " link set veth-col up",
		// Static neighbours: no first packet waits for resolution.
		"ip -n " + sw + " neigh replace 192.0.2.2 lladdr 02:00:00:00:00:02 dev veth-sw",
		"ip -n " + sw + " neigh replace 2001:db8::2 lladdr 02:00:00:00:00:02 dev veth-sw",
		"ip -n " + col + " neigh replace 192.0.2.1 lladdr 02:00:00:00:00:01 dev veth-col",
		"ip -n " + col + " neigh replace 2001:db8::1 lladdr 02:00:00:00:00:01 dev veth-col",
	}, " && "))
	return sw, col
}

// in runs fn on a thread inside namespace ns; the thread is discarded after.
func in(t *testing.T, ns string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err != nil {
			t.Error(err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

// rawSend sends GRE payloads from namespace ns to dst with a raw socket.
func rawSend(t *testing.T, ns, dst string, pkts ...[]byte) {
	t.Helper()
	in(t, ns, func() {
		family := unix.AF_INET
		var sa unix.Sockaddr
		if strings.Contains(dst, ":") {
			family = unix.AF_INET6
			a := unix.SockaddrInet6{}
			copy(a.Addr[:], parseIP(t, dst))
			sa = &a
		} else {
			a := unix.SockaddrInet4{}
			copy(a.Addr[:], parseIP(t, dst))
			sa = &a
		}
		fd, err := unix.Socket(family, unix.SOCK_RAW, 47)
		if err != nil {
			t.Error(err)
			return
		}
		defer unix.Close(fd)
		for _, p := range pkts {
			if err := unix.Sendto(fd, p, 0, sa); err != nil {
				t.Error(err)
				return
			}
		}
	})
}
