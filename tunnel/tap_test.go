package tunnel

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestTAPCreateAdoptForeign(t *testing.T) {
	ns := newNS(t)
	in(t, ns, func() {
		mac := net.HardwareAddr{0xfe, 0xe1, 0xba, 0xd1, 2, 3}
		l, adopted, err := CreateTAP("erspan3", mac, 1400)
		if err != nil || adopted {
			t.Fatalf("create: %v adopted=%v", err, adopted)
		}
		nl, err := netlink.LinkByName("erspan3")
		if err != nil {
			t.Fatal(err)
		}
		a := nl.Attrs()
		if a.Alias != LinkAlias || a.MTU != 1400 || a.HardwareAddr.String() != mac.String() || a.Flags&net.FlagUp != 0 || l.Index != a.Index {
			t.Errorf("link %+v (want alias %q, mtu 1400, %s, down)", a, LinkAlias, mac)
		}
		if _, adopted, err := CreateTAP("erspan3", RandomMAC(), 1500); err != nil || !adopted {
			t.Errorf("second create: %v adopted=%v, want adopted", err, adopted)
		}
		// Somebody else's links of our names: a veth, and a TAP without
		// our alias.
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "erspan9"}, PeerName: "erspan9p"}); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "erspan8"}, Mode: netlink.TUNTAP_MODE_TAP}); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"erspan9", "erspan8"} {
			if _, _, err := CreateTAP(n, RandomMAC(), 1500); !errors.Is(err, unix.EEXIST) {
				t.Errorf("over a foreign link %s: %v, want EEXIST", n, err)
			}
		}
		if err := DeleteTAP("erspan3"); err != nil {
			t.Fatal(err)
		}
		if err := DeleteTAP("erspan3"); !errors.Is(err, unix.ENXIO) {
			t.Errorf("delete twice: %v, want ENXIO", err)
		}
	})
}

func TestRandomMAC(t *testing.T) {
	for range 100 {
		m := RandomMAC()
		if !strings.HasPrefix(m.String(), "fe:e1:ba:d") || len(m) != 6 {
			t.Fatalf("%s is not fe:e1:ba:dX:XX:XX", m)
		}
	}
}

// echoRequest is an Ethernet frame carrying an ICMP echo request from
// 192.0.2.1 (MAC 02:..:01) to 192.0.2.2 at dst.
func echoRequest(dst net.HardwareAddr) []byte {
	f := make([]byte, 14+20+8+8)
	copy(f[0:6], dst)
	copy(f[6:12], []byte{2, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 1
	binary.BigEndian.PutUint16(ip[2:], 36)
	copy(ip[12:], []byte{192, 0, 2, 1})
	copy(ip[16:], []byte{192, 0, 2, 2})
	binary.BigEndian.PutUint16(ip[10:], ^sum16(ip))
	icmp := f[34:]
	icmp[0] = 8
	binary.BigEndian.PutUint16(icmp[4:], 0x1234)
	binary.BigEndian.PutUint16(icmp[2:], ^sum16(icmp))
	return f
}

func sum16(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// packetSocket opens an AF_PACKET socket on ifindex that counts incoming
// frames (what tcpdump would see).
func packetSocket(t *testing.T, ifindex int) int {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval(int64(300 * time.Millisecond))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return fd
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// captured counts frames received (not sent) on fd until it is quiet.
func captured(fd int) int {
	n := 0
	buf := make([]byte, 2048)
	for {
		_, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return n
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype != unix.PACKET_OUTGOING {
			n++
		}
	}
}

// TestMonitorMode: with monitor mode a frame written into the TAP reaches
// packet sockets but not the IP stack; without it the stack answers.
func TestMonitorMode(t *testing.T) {
	ns := newNS(t)
	in(t, ns, func() {
		l, _, err := CreateTAP("erspan0", RandomMAC(), 1500)
		if err != nil {
			t.Fatal(err)
		}
		q, err := OpenQueue("erspan0")
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		sh(t, "ip -n "+ns+" addr add 192.0.2.2/24 dev erspan0 && ip -n "+ns+" link set erspan0 up && "+
			"ip -n "+ns+" neigh add 192.0.2.1 lladdr 02:00:00:00:00:01 dev erspan0")
		replies := make(chan int, 16)
		go func() { // the stack's answers come out of the queue
			buf := make([]byte, 2048)
			for {
				n, err := q.Read(buf)
				if err != nil {
					return
				}
				if n >= 35 && buf[12] == 8 && buf[13] == 0 && buf[23] == 1 && buf[34] == 0 {
					replies <- n // an echo reply
				}
			}
		}()
		ps := packetSocket(t, l.Index)
		defer unix.Close(ps)
		for _, on := range []bool{true, false, true} {
			if err := SetMonitor("erspan0", on); err != nil {
				t.Fatal(err)
			}
			if err := SetMonitor("erspan0", on); err != nil { // idempotent
				t.Fatal(err)
			}
			if got, err := MonitorEnabled("erspan0"); err != nil || got != on {
				t.Fatalf("MonitorEnabled = %v, %v; want %v", got, err, on)
			}
			v, _ := os.ReadFile("/proc/sys/net/ipv6/conf/erspan0/disable_ipv6")
			if want := map[bool]string{true: "1", false: "0"}[on]; strings.TrimSpace(string(v)) != want {
				t.Errorf("monitor %v: disable_ipv6 = %q", on, v)
			}
			for len(replies) > 0 {
				<-replies
			}
			if _, err := q.Write(echoRequest(l.MAC)); err != nil {
				t.Fatal(err)
			}
			if n := captured(ps); n != 1 {
				t.Errorf("monitor %v: packet socket saw %d frames, want 1", on, n)
			}
			got := 0
			select {
			case <-replies:
				got = 1
			case <-time.After(300 * time.Millisecond):
			}
			if on && got != 0 {
				t.Error("monitor on: the stack answered a mirrored echo request")
			}
			if !on && got != 1 {
				t.Error("monitor off: the stack did not answer (the test cannot see answers)")
			}
		}
		filters, _ := netlink.FilterList(mustLink(t, "erspan0"), netlink.HANDLE_MIN_INGRESS)
		if len(filters) != 1 {
			t.Errorf("%d ingress filters, want exactly our one", len(filters))
		}
	})
}

func mustLink(t *testing.T, name string) netlink.Link {
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
