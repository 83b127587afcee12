package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Socket sizing, the defaults of erspand's --rx-batch, --rx-buffer and
// --tx-buffer, chosen with scripts/bench.sh --sweep (README, Performance):
// DefaultBatch messages per recvmmsg (per ReadBatch from a tunneldev's
// ring); DefaultBufSize bytes per message hold a jumbo mirrored frame plus
// headers (larger ones arrive cut short and are counted as truncated; a
// ring cuts only at its block size, 128 KiB); DefaultRcvBuf bytes of
// receive buffer absorb a burst of about 20k full-size frames while the
// TAP writes catch up (for a tunneldev, the ring's size, allocated at
// once; so is a GRE socket's eBPF ring, see greRingSize); DefaultSndBuf bytes of send buffer, shared by the interfaces of a
// namespace, hold about 3000 full-size packets queued for the links before
// the kernel refuses more (see setupSendSocket).
//
// DefaultModerate is the receive interrupt moderation delay (batchConn;
// for a ring, its retire timer, rounded up to at least 1 ms), chosen the
// same way.
const (
	DefaultBatch    = 64
	DefaultBufSize  = 9216 + 128
	DefaultRcvBuf   = 32 << 20
	DefaultSndBuf   = 4 << 20
	DefaultModerate = 100 * time.Microsecond
)

// Linux is the System of a real host: TAPs through netlink and water, GRE
// through raw sockets, namespaces by name (`ip netns`).
type Linux struct {
	// Batch, BufSize and RcvBuf size receive sockets and rings
	// (DefaultBatch and the rest say how), SndBuf send sockets (0: the
	// kernel's default), for sockets opened after they are set.
	Batch, BufSize, RcvBuf, SndBuf int
	Moderate                       time.Duration
	// URing makes frame writers batch their writes on io_uring rather
	// than write(2) each frame (see tapWriter).
	URing bool
	// Ring makes GRE receive sockets read an eBPF ring where the kernel
	// allows it (greRing), not recvmmsg.
	Ring bool
	// home is the daemon's own network namespace, the "" of every ns
	// argument, taken at NewLinux while the thread is still in it.
	home netns.NsHandle
	// senders are the shared send sockets (see sender_linux.go).
	senders sendSockets
}

var _ System = (*Linux)(nil)

// NewLinux returns the System of this host. Call it before anything moves
// a thread into another namespace (in practice: at start).
func NewLinux() (*Linux, error) {
	home, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("open the daemon's network namespace: %w", err)
	}
	return &Linux{Batch: DefaultBatch, BufSize: DefaultBufSize, RcvBuf: DefaultRcvBuf,
		SndBuf: DefaultSndBuf, Moderate: DefaultModerate, Ring: true, home: home}, nil
}

func (l *Linux) CreateTAP(ns, name string, mac net.HardwareAddr, mtu int) (link Link, adopted bool, err error) {
	err = inNamespace(ns, func() error {
		link, adopted, err = CreateTAP(name, mac, mtu)
		return err
	})
	return link, adopted, err
}

func (l *Linux) DeleteTAP(ns, name string) error {
	return inNamespace(ns, func() error { return DeleteTAP(name) })
}

func (l *Linux) SetLinkUp(ns, name string, up bool) error {
	return inNamespace(ns, func() error { return SetLinkUp(name, up) })
}

func (l *Linux) SetMonitor(ns, name string, on bool) error {
	return inNamespace(ns, func() error { return SetMonitor(name, on) })
}

func (l *Linux) SetLinkAttrs(ns, name string, mtu int, mac net.HardwareAddr) error {
	return inNamespace(ns, func() error {
		link, err := linkByName(name)
		if err != nil {
			return err
		}
		if link.Attrs().MTU != mtu {
			if err := netlink.LinkSetMTU(link, mtu); err != nil {
				return fmt.Errorf("mtu %d: %w", mtu, err)
			}
		}
		if len(mac) > 0 && link.Attrs().HardwareAddr.String() != mac.String() {
			if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
				return fmt.Errorf("lladdr %s: %w", mac, err)
			}
		}
		return nil
	})
}

func (l *Linux) MoveTAP(name, from, to string) (Link, error) {
	target, closeNS, err := openNamespace(l.home, to)
	if err != nil {
		return Link{}, err
	}
	defer closeNS()
	err = inNamespace(from, func() error {
		link, err := linkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(link, int(target))
	})
	if err != nil {
		return Link{}, err
	}
	var out Link
	err = inNamespace(to, func() error {
		link, err := linkByName(name)
		if err != nil {
			return fmt.Errorf("after the move: %w", err)
		}
		out = linkOf(link)
		// Best effort: the link has moved, and an error here would make
		// the caller believe it had not (its undo, its namespace). The
		// default qdisc costs kernel memory, not frames.
		_ = setNoQueue(link)
		return nil
	})
	return out, err
}

func (l *Linux) OpenQueue(ns, name string) (q Queue, err error) {
	err = inNamespace(ns, func() error {
		q, err = OpenQueue(name)
		return err
	})
	return q, err
}

// ListenGRE opens a receive socket (listenGRE). One that reads with
// recvmmsg, whose buffer can overflow, holds a guard: the shared send
// socket of (ns, family, no DF), until it closes; one with an eBPF ring
// needs none. A send socket is a raw GRE socket that accepts nothing already
// (sender_linux.go): a guard of its own would cost the kernel one more
// clone and filter run per GRE packet, and the shared one is there anyway
// whenever an interface of the namespace sends without DF, as a collector
// with a tunnel destination does.
func (l *Linux) ListenGRE(ns string, family int) (Socket, error) {
	var s Socket
	err := inNamespace(ns, func() (err error) {
		s, err = listenGRE(family, l.Batch, l.BufSize, l.RcvBuf, l.Moderate, l.Ring)
		return err
	})
	if err != nil {
		return nil, err
	}
	if g, ok := s.(*GRESocket); ok {
		if g.guards, err = l.takeGuards(ns, family); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// takeGuards takes the shared send sockets without DF of ns and the families
// as guards (none while guardSockets is off). IPv6's is left out where
// the kernel has no IPv6.
func (l *Linux) takeGuards(ns string, families ...int) (guards, error) {
	var g guards
	if !guardSockets {
		return g, nil
	}
	for _, family := range families {
		_, release, err := l.sendSocket(ns, family, false)
		if family == 6 && errors.Is(err, unix.EAFNOSUPPORT) {
			continue
		}
		if err != nil {
			g.release()
			return nil, fmt.Errorf("raw GRE guard socket (IPv%d): %w", family, err)
		}
		g = append(g, release)
	}
	return g, nil
}

// ListenCapture opens a capture socket (listenCapture) on dev in ns, with
// the namespace's shared send sockets without DF of both families as
// guards: a sensor NIC usually has no address, but one that has, and
// receives ERSPAN for it, would otherwise have the kernel answer every
// packet with ICMP protocol unreachable, as no raw GRE socket takes it.
// They are taken first (unlike ListenGRE's, which guard a socket that is
// itself a raw GRE socket), so that no packet finds the namespace without
// one while the capture opens.
func (l *Linux) ListenCapture(ns, dev string) (Socket, error) {
	g, err := l.takeGuards(ns, 4, 6)
	if err != nil {
		return nil, err
	}
	var s *CaptureSocket
	err = inNamespace(ns, func() (err error) {
		s, err = listenCapture(dev, l.Batch, l.BufSize, l.RcvBuf, l.Moderate, g)
		return err
	})
	if err != nil {
		g.release()
		return nil, err
	}
	return s, nil
}

// OpenSender returns a sender from src to dst on the shared send socket of
// (ns, family, df), opening it for the first user.
func (l *Linux) OpenSender(ns string, src, dst netip.Addr, ttl int, df bool) (Sender, error) {
	family := 4
	if src.Is6() {
		family = 6
	}
	sock, release, err := l.sendSocket(ns, family, df)
	if err != nil {
		return nil, err
	}
	return newRawSender(sock, release, src, dst, ttl), nil
}

// sendSocket returns the shared send socket of (ns, family, df), opening
// it for the first user, and the function that gives it back.
func (l *Linux) sendSocket(ns string, family int, df bool) (*sendSocket, func(), error) {
	return l.senders.get(sendKey{ns, family, df}, func() (s *sendSocket, err error) {
		err = inNamespace(ns, func() error {
			s, err = openSendSocket(family, df, l.SndBuf)
			return err
		})
		return s, err
	})
}

func (l *Linux) CheckNamespace(name string) error { return CheckNamespace(name) }

func (l *Linux) CheckDevice(ns, dev string) error {
	return inNamespace(ns, func() error {
		_, err := deviceIndex(dev)
		return err
	})
}
