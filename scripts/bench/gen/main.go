// Command gen is the traffic generator of the benchmark and the demo. In
// gre and eth modes it plays a switch: ERSPAN packets to a collector,
// either over a raw IPPROTO_GRE socket (the kernel routes and builds the
// IPv4 or IPv6 header; Type I, II or III) or as whole Ethernet frames on an
// AF_PACKET socket (no routing, no IP output: more packets per core, so
// that the generator is less often the limit; Type II over IPv4 only). In
// tap mode it plays a bridge feeding a span port: plain Ethernet frames
// written into an interface (erspanN in source mode). All send with
// sendmmsg from a ring of prebuilt packets, at a given rate, one at a time
// with a pause between (-interval, for demos) or as fast as they can, and
// stop at a count or a duration, whichever comes first. It prints what it
// sent as key=value.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
	"github.com/erspan-linux/erspan/scripts/bench/internal/cputime"
	"github.com/erspan-linux/erspan/scripts/bench/internal/frame"
)

// ringLen prebuilt packets: enough distinct buffers that the sender does
// not replay one hot cache line, few enough to build in a blink.
const ringLen = 4096

func main() {
	mode := flag.String("mode", "gre", "gre or eth (ERSPAN to -dst), or tap (Ethernet frames into -dev)")
	src := flag.String("src", "192.0.2.1", "eth mode: switch (source) IPv4 address")
	dst := flag.String("dst", "192.0.2.2", "gre and eth modes: collector address (IPv6 in gre mode only)")
	typ := flag.Int("type", 2, "ERSPAN type: 1, 2 or 3 in gre mode; eth mode sends 2 only")
	dstMAC := flag.String("dstmac", "", "eth mode: the collector's MAC address on -dev")
	dev := flag.String("dev", "erspan0", "eth and tap modes: interface to send on")
	size := flag.Int("size", 64, "inner Ethernet frame size in bytes (no FCS)")
	session := flag.Int("session", 77, "gre and eth modes: first ERSPAN session ID (Type II and III)")
	sessions := flag.Int("sessions", 1, "gre and eth modes: spread packets over this many consecutive session IDs")
	rate := flag.Float64("rate", 0, "packets per second; 0 = as fast as possible")
	interval := flag.Duration("interval", 0, "pause between packets, sent one at a time (instead of -rate)")
	count := flag.Int64("count", 1_000_000, "stop after this many packets")
	dur := flag.Duration("duration", 5*time.Second, "stop after this long")
	batch := flag.Int("batch", 32, "packets per sendmmsg")
	flag.Parse()

	o := opts{*mode, *src, *dst, *dstMAC, *dev, *size, *typ, *session, *sessions, *rate, *count, *dur, *interval, *batch}
	if err := run(&o); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

type opts struct {
	mode, src, dst, dstMAC, dev  string
	size, typ, session, sessions int
	rate                         float64
	count                        int64
	dur, interval                time.Duration
	batch                        int
}

func run(o *opts) error {
	switch {
	case o.size < frame.Min || o.size > frame.Max:
		return fmt.Errorf("size %d outside %d..%d", o.size, frame.Min, frame.Max)
	case o.count < 1 || o.count > 100_000_000, o.dur <= 0 || o.dur > 10*time.Minute:
		return fmt.Errorf("count and duration must be bounded (1..1e8, up to 10m)")
	case o.batch < 1 || o.batch > ringLen:
		return fmt.Errorf("batch %d outside 1..%d", o.batch, ringLen)
	case o.sessions < 1 || o.session < 0 || o.session+o.sessions > 1024:
		return fmt.Errorf("sessions %d..%d outside 0..1023", o.session, o.session+o.sessions-1)
	case o.typ < 1 || o.typ > 3:
		return fmt.Errorf("-type %d: want 1, 2 or 3", o.typ)
	case o.typ != 2 && o.mode != "gre":
		// eth mode's prebuilt outer IPv4 header has the length of a
		// Type II packet; tap mode sends no ERSPAN at all.
		return fmt.Errorf("-type %d: only gre mode sends Type I or III (eth mode sends Type II)", o.typ)
	case o.interval < 0 || o.interval > time.Minute:
		return fmt.Errorf("interval %v outside 0..1m", o.interval)
	case o.interval > 0 && o.rate > 0:
		return fmt.Errorf("-interval and -rate exclude each other: give one")
	}
	if o.interval > 0 {
		// A pause between packets means one packet per send.
		o.batch = 1
	}
	dst, err := netip.ParseAddr(o.dst)
	switch {
	case err != nil:
		return fmt.Errorf("-dst %q: want an IP address", o.dst)
	case o.mode != "gre" && !dst.Is4():
		// eth mode builds the outer IPv4 header itself.
		return fmt.Errorf("-dst %q: want an IPv4 address (IPv6 only in gre mode)", o.dst)
	}
	var (
		fd     int
		name   unsafe.Pointer
		nlen   uint32
		prefix []byte // what goes in front of the ERSPAN header (eth mode)
		encap  = o.mode != "tap"
	)
	switch o.mode {
	case "gre":
		family := unix.AF_INET
		if dst.Is6() {
			family = unix.AF_INET6
		}
		fd, err = unix.Socket(family, unix.SOCK_RAW, erspan.IPProtoGRE)
		if err != nil {
			return fmt.Errorf("raw GRE socket: %w", err)
		}
		// A raw GRE socket gets a copy of every GRE packet that arrives;
		// this one only sends, so a filter that accepts nothing keeps
		// the kernel from queueing copies to it.
		drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
			&unix.SockFprog{Len: 1, Filter: &drop[0]}); err != nil {
			return fmt.Errorf("attach drop filter: %w", err)
		}
		if dst.Is6() {
			sa := &unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: dst.As16()}
			name, nlen = unsafe.Pointer(sa), unix.SizeofSockaddrInet6
		} else {
			sa := &unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst.As4()}
			name, nlen = unsafe.Pointer(sa), unix.SizeofSockaddrInet4
		}
	case "eth", "tap":
		ifi, err := net.InterfaceByName(o.dev)
		if err != nil {
			return err
		}
		if o.mode == "eth" {
			src, err := netip.ParseAddr(o.src)
			if err != nil || !src.Is4() {
				return fmt.Errorf("-src %q: want an IPv4 address", o.src)
			}
			mac, err := net.ParseMAC(o.dstMAC)
			if err != nil || len(mac) != 6 {
				return fmt.Errorf("-dstmac %q: want a MAC address", o.dstMAC)
			}
			prefix = outer(ifi.HardwareAddr, mac, src, dst, o.size)
		}
		// Protocol 0: a socket that sends and never receives.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		// Straight to the driver: a qdisc would drop (or requeue)
		// before the device does, hiding the device's own tx_dropped,
		// which is the loss we want to see.
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
		}
		sa := &unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: htons(unix.ETH_P_IP), Ifindex: int32(ifi.Index)}
		name, nlen = unsafe.Pointer(sa), unix.SizeofSockaddrLinklayer
	default:
		return fmt.Errorf("-mode %q: want gre, eth or tap", o.mode)
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)

	// One buffer per ring slot (outer headers, then the frame), one
	// iovec and one mmsghdr each, all built once, so that a batch is a
	// pointer into msgs and a count. Type I has no session and no
	// sequence number (Encode leaves both out); II and III carry both.
	typ := erspan.Type(o.typ)
	hl := len(prefix)
	if encap {
		hl += erspan.HeaderLen(&erspan.Packet{Type: typ, HasSeq: typ != erspan.TypeI})
	}
	bufs := make([][]byte, ringLen)
	hdrs := make([]erspan.Packet, ringLen)
	iovs := make([]unix.Iovec, ringLen)
	msgs := make([]unix.Mmsghdr, ringLen)
	for i := range bufs {
		bufs[i] = append(make([]byte, hl, hl+o.size), frame.Build(o.size, i)...)
		copy(bufs[i], prefix)
		hdrs[i] = erspan.Packet{Type: typ, HasSeq: typ != erspan.TypeI, Session: uint16(o.session + i%o.sessions)}
		iovs[i].Base = &bufs[i][0]
		iovs[i].SetLen(len(bufs[i]))
		msgs[i].Hdr.Name = (*byte)(name)
		msgs[i].Hdr.Namelen = nlen
		msgs[i].Hdr.Iov = &iovs[i]
		msgs[i].Hdr.Iovlen = 1
	}

	var sent, errs int64
	// One sequence counter per session, as each of a switch's mirror
	// sessions numbers its own packets: one counter for all would make
	// every packet of a spread run a gap of -sessions in erspand's loss
	// tracking. Slot j carries session o.session + j%o.sessions.
	seqs := make([]uint32, o.sessions)
	cpu0 := cputime.Self()
	start := time.Now()
	deadline := start.Add(o.dur)
	for i := 0; sent < o.count; {
		n := min(int64(o.batch), o.count-sent, int64(ringLen-i))
		if o.rate > 0 {
			// Token bucket with a burst of one batch: wait until
			// the batch is due.
			due := start.Add(time.Duration(float64(sent+n) / o.rate * 1e9))
			if wait := time.Until(due); wait > 0 {
				if due.After(deadline) {
					break
				}
				time.Sleep(wait)
			}
		} else if o.interval > 0 && sent > 0 {
			// A pause between packets, as a person watching
			// the demo would send them; none before the first.
			time.Sleep(o.interval)
		}
		if time.Now().After(deadline) {
			break
		}
		if encap {
			// The next sequence number of its session per packet,
			// as a switch sends: the receiver's gap counters stay
			// meaningful.
			for j := i; j < i+int(n); j++ {
				hdrs[j].Seq = seqs[j%o.sessions]
				seqs[j%o.sessions]++
				if _, err := erspan.Encode(bufs[j][len(prefix):], &hdrs[j]); err != nil {
					return err
				}
			}
		}
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[i])), uintptr(n), 0, 0, 0)
		switch {
		case e == unix.ENOBUFS || e == unix.EAGAIN || e == unix.EINTR:
			r = 0 // nothing sent; the same slots go again
			errs++
		case e != 0:
			return fmt.Errorf("sendmmsg: %w", e)
		}
		if encap {
			// The slots not sent are encoded again with the numbers
			// they had: give those back, the last first.
			for j := i + int(n) - 1; j >= i+int(r); j-- {
				seqs[j%o.sessions]--
			}
		}
		sent += int64(r)
		i = (i + int(r)) % ringLen
	}
	elapsed := time.Since(start).Seconds()
	// cpu: the process's user and system time while it sent, which
	// includes what the kernel did in its sendmmsg calls (bench.sh's
	// send-alone rows).
	cpu := cputime.Self() - cpu0
	fmt.Printf("sent=%d elapsed=%.6f rate=%.0f send_errors=%d cpu=%.6f\n", sent, elapsed, float64(sent)/elapsed, errs, cpu.Seconds())
	return nil
}

// outer returns the Ethernet and IPv4 headers of an ERSPAN II packet
// carrying a frame of size bytes. The IPv4 header is the same for every
// packet of a run (ID 0, DF set, as a switch's mirror session sends), so
// its checksum is computed once.
func outer(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, size int) []byte {
	b := make([]byte, 34)
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:], unix.ETH_P_IP)
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+erspan.EncapTypeIILen+size))
	ip[6] = 0x40 // DF
	ip[8], ip[9] = 64, erspan.IPProtoGRE
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], erspan.Checksum(ip[:20]))
	return b
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
