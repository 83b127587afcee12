package tunnel

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"

	"github.com/songgao/water"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LinkAlias is the alias (IFLA_IFALIAS) of every link erspand creates, so
// that a later daemon can tell its own TAPs from anybody else's.
const LinkAlias = "erspand"

// Link is what the data path knows of a TAP link.
type Link struct {
	Index int
	Name  string
	MAC   net.HardwareAddr
	MTU   int
}

// Queue is one queue of a multi-queue TAP: Read returns one frame leaving
// the interface, Write delivers one frame into it. Close unblocks a pending
// Read.
type Queue interface {
	Read(b []byte) (int, error)
	Write(frame []byte) (int, error)
	Close() error
}

// RandomMAC returns a random address of the form fe:e1:ba:dX:XX:XX, as
// OpenBSD's erspan(4) picks at create.
func RandomMAC() net.HardwareAddr {
	var r [3]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails on Linux
	return net.HardwareAddr{0xfe, 0xe1, 0xba, 0xd0 | r[0]&0x0f, r[1], r[2]}
}

func linkOf(l netlink.Link) Link {
	a := l.Attrs()
	return Link{Index: a.Index, Name: a.Name, MAC: a.HardwareAddr, MTU: a.MTU}
}

// CreateTAP creates a persistent multi-queue TAP (IFF_TAP, IFF_NO_PI,
// IFF_MULTI_QUEUE) called name in the calling thread's network namespace,
// down, with address mac and MTU mtu, marked with LinkAlias. When a TAP of
// that name marked with LinkAlias exists, it is returned unchanged with
// adopted true. Any other link of that name is an error wrapping EEXIST
// (ip_gre's fallback erspan0, for one).
func CreateTAP(name string, mac net.HardwareAddr, mtu int) (Link, bool, error) {
	if l, err := netlink.LinkByName(name); err == nil {
		if _, ok := l.(*netlink.Tuntap); ok && l.Attrs().Alias == LinkAlias {
			return linkOf(l), true, nil
		}
		return Link{}, false, fmt.Errorf("a %s link named %s exists that erspand did not make: %w", l.Type(), name, unix.EEXIST)
	} else if !errors.As(err, &netlink.LinkNotFoundError{}) {
		return Link{}, false, fmt.Errorf("look up link %s: %w", name, err)
	}
	// IFF_TUN_EXCL: should a TAP of that name appear meanwhile, fail
	// rather than attach to somebody else's device.
	t := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_MULTI_QUEUE_DEFAULTS | netlink.TUNTAP_TUN_EXCL,
		Queues:    1,
	}
	if err := netlink.LinkAdd(t); err != nil {
		return Link{}, false, fmt.Errorf("create TAP %s: %w", name, err)
	}
	// The device is persistent (TUNSETPERSIST): it outlives the queue
	// netlink opened, and our queues are attached with water.
	for _, f := range t.Fds {
		f.Close()
	}
	l, err := netlink.LinkByName(name)
	if err == nil {
		err = setupTAP(l, mac, mtu)
	}
	if err != nil {
		_ = DeleteTAP(name)
		return Link{}, false, fmt.Errorf("set up TAP %s: %w", name, err)
	}
	l, err = netlink.LinkByName(name)
	if err != nil {
		return Link{}, false, err
	}
	return linkOf(l), false, nil
}

// setupTAP sets what netlink's LinkAdd ignores for a Tuntap: alias, MTU
// and address.
func setupTAP(l netlink.Link, mac net.HardwareAddr, mtu int) error {
	if err := netlink.LinkSetAlias(l, LinkAlias); err != nil {
		return fmt.Errorf("alias: %w", err)
	}
	if mtu > 0 {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("mtu %d: %w", mtu, err)
		}
	}
	if len(mac) > 0 {
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return fmt.Errorf("lladdr %s: %w", mac, err)
		}
	}
	return nil
}

// DeleteTAP removes the link; an absent link is an error wrapping ENXIO.
func DeleteTAP(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			return fmt.Errorf("link %s: %w", name, unix.ENXIO)
		}
		return err
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// SetLinkUp sets the administrative state of the link.
func SetLinkUp(name string, up bool) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if up {
		err = netlink.LinkSetUp(l)
	} else {
		err = netlink.LinkSetDown(l)
	}
	return err
}

// OpenQueue attaches one queue to the TAP with water. water opens
// /dev/net/tun non-blocking and wraps it in an os.File after TUNSETIFF, so
// reads and writes go through Go's netpoller. Persist must be true: water
// sets TUNSETPERSIST to its value, and false would let the device vanish
// with its last queue.
func OpenQueue(name string) (Queue, error) {
	ifce, err := water.New(water.Config{
		DeviceType: water.TAP,
		PlatformSpecificParams: water.PlatformSpecificParams{
			Name:       name,
			Persist:    true,
			MultiQueue: true,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("attach a queue to TAP %s: %w", name, err)
	}
	return ifce, nil
}
