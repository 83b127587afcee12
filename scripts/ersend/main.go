// Command ersend plays a switch's mirror session for demos and tests: it
// sends ERSPAN (Type I, II or III) over a raw GRE socket, carrying made-up
// ICMP echo frames between two documentation addresses. It sends a bounded
// number of packets and exits.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

func main() {
	dst := flag.String("dst", "192.0.2.2", "collector address (outer destination)")
	typ := flag.Int("type", 2, "ERSPAN type: 1, 2 or 3")
	session := flag.Int("session", 77, "ERSPAN session ID (Type II and III)")
	count := flag.Int("count", 5, "frames to send (at most 100000)")
	interval := flag.Duration("interval", 200*time.Millisecond, "pause between frames")
	flag.Parse()

	if err := run(*dst, *typ, *session, *count, *interval); err != nil {
		fmt.Fprintln(os.Stderr, "ersend:", err)
		os.Exit(1)
	}
}

func run(dst string, typ, session, count int, interval time.Duration) error {
	addr, err := netip.ParseAddr(dst)
	if err != nil {
		return err
	}
	if count < 0 || count > 100000 {
		return fmt.Errorf("count %d is outside 0..100000", count)
	}
	p := erspan.Packet{Session: uint16(session)}
	switch typ {
	case 1:
		p.Type = erspan.TypeI
	case 2:
		p.Type, p.HasSeq = erspan.TypeII, true
	case 3:
		p.Type, p.HasSeq = erspan.TypeIII, true
	default:
		return fmt.Errorf("type %d: want 1, 2 or 3", typ)
	}
	var family int
	var sa unix.Sockaddr
	if addr.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: addr.As4()}
	} else {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: addr.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW, erspan.IPProtoGRE)
	if err != nil {
		return fmt.Errorf("raw GRE socket: %w", err)
	}
	defer unix.Close(fd)

	buf := make([]byte, 256)
	for i := 0; i < count; i++ {
		p.Seq = uint32(i)
		n, err := erspan.Encode(buf, &p)
		if err != nil {
			return err
		}
		n += echoFrame(buf[n:], uint16(i))
		if err := unix.Sendto(fd, buf[:n], 0, sa); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		if i+1 < count {
			time.Sleep(interval)
		}
	}
	what := fmt.Sprintf("session %d", session)
	if p.Type == erspan.TypeI {
		what = "no session"
	}
	fmt.Printf("ersend: sent %d ERSPAN Type %v frames (%s) to %s\n", count, p.Type, what, addr)
	return nil
}

// echoFrame writes an Ethernet + IPv4 + ICMP echo request from 203.0.113.10
// to 203.0.113.20 into b and returns its length.
func echoFrame(b []byte, seq uint16) int {
	src := net.HardwareAddr{0x02, 0, 0x5e, 0, 0x53, 0x10}
	dst := net.HardwareAddr{0x02, 0, 0x5e, 0, 0x53, 0x20}
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	const payload = 32
	icmp := b[34 : 34+8+payload]
	ip[0], ip[1] = 0x45, 0
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	binary.BigEndian.PutUint16(ip[4:], seq)
	ip[6], ip[7], ip[8], ip[9] = 0, 0, 64, 1
	ip[10], ip[11] = 0, 0
	copy(ip[12:16], []byte{203, 0, 113, 10})
	copy(ip[16:20], []byte{203, 0, 113, 20})
	binary.BigEndian.PutUint16(ip[10:], erspan.Checksum(ip))
	icmp[0], icmp[1], icmp[2], icmp[3] = 8, 0, 0, 0
	binary.BigEndian.PutUint16(icmp[4:], 0x4553)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	for i := 8; i < len(icmp); i++ {
		icmp[i] = byte(i)
	}
	binary.BigEndian.PutUint16(icmp[2:], erspan.Checksum(icmp))
	return 34 + len(icmp)
}
