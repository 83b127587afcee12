package tunnel

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/songgao/water"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LinkAlias is the alias (IFLA_IFALIAS, `ip link show` prints it) set on
// every link erspand creates. A later daemon adopts a TAP with this alias
// as its own and refuses to touch any other link, such as the fallback
// `erspan0` that ip_gre makes in every namespace.
const LinkAlias = "erspand"

// Link is what the data path knows of one erspanN network interface.
type Link struct {
	Index int
	Name  string
	MAC   net.HardwareAddr
	MTU   int
}

// tapFlags are the TUNSETIFF flags of an erspanN TAP besides IFF_TAP: no
// packet-information prefix (a read returns the Ethernet frame alone) and
// multi-queue. erspand attaches one queue: with more, the kernel hashes
// every written frame to steer flows, and per CPU-second a queue each for
// several writers cost more than one (README, Performance). A queue
// attached later must ask for the same flags or TUNSETIFF fails with
// EINVAL.
const tapFlags = netlink.TUNTAP_NO_PI | netlink.TUNTAP_MULTI_QUEUE

// RandomMAC returns a random locally administered unicast address of the
// form fe:e1:ba:dX:XX:XX, the form OpenBSD gives a new erspan(4)
// interface.
func RandomMAC() net.HardwareAddr {
	mac := net.HardwareAddr{0xfe, 0xe1, 0xba, 0xd0, 0, 0}
	var r [3]byte
	rand.Read(r[:]) // never fails (crypto/rand, Go >= 1.24)
	mac[3] |= r[0] & 0x0f
	mac[4], mac[5] = r[1], r[2]
	return mac
}

// CreateTAP makes the persistent multi-queue TAP name (IFF_TAP, IFF_NO_PI,
// IFF_MULTI_QUEUE) in the calling thread's network namespace, with the
// given MAC (nil: RandomMAC) and MTU (0: the kernel's 1500), alias
// LinkAlias and root qdisc noqueue (setNoQueue), and leaves it down with
// no queue attached.
//
// When a link called name exists already, CreateTAP changes nothing: if it
// is a TAP of ours (alias LinkAlias) it returns it with adopted true, as it
// is (its MAC and MTU are not reset); otherwise the error wraps
// unix.EEXIST. A name the kernel would not take verbatim gives EINVAL. On
// any other failure the half-made link is removed again.
func CreateTAP(name string, mac net.HardwareAddr, mtu int) (l Link, adopted bool, err error) {
	if err := CheckLinkName(name); err != nil {
		return Link{}, false, err
	}
	existing, err := netlink.LinkByName(name)
	switch {
	case err == nil:
		if err := checkOurTAP(existing); err != nil {
			return Link{}, false, err
		}
		// A TAP made before erspand set noqueue may have the default.
		// Best effort: a TAP that keeps it still works (the default
		// costs kernel memory, not frames), and refusing to adopt it
		// would drop the interface from erspand's state.
		_ = setNoQueue(existing)
		return linkOf(existing), true, nil
	case !isLinkNotFound(err):
		return Link{}, false, fmt.Errorf("look up link %s: %w", name, err)
	}

	// netlink makes a Tuntap with TUNSETIFF and TUNSETPERSIST on
	// /dev/net/tun, not with RTM_NEWLINK. TUNSETIFF on an existing TUN/TAP
	// name attaches to that device rather than failing, so IFF_TUN_EXCL
	// closes the window between the look-up above and this call: the
	// kernel then refuses (EBUSY) a name that appeared meanwhile. The
	// kernel does not keep IFF_TUN_EXCL among the device's flags, so the
	// queues OpenQueue attaches later are not affected by it.
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.NewLinkAttrs(),
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     tapFlags | netlink.TUNTAP_TUN_EXCL,
		Queues:    1,
	}
	tap.Name = name
	if err := netlink.LinkAdd(tap); err != nil {
		if _, lerr := netlink.LinkByName(name); lerr == nil {
			return Link{}, false, fmt.Errorf("create TAP %s: a link of that name appeared meanwhile: %w", name, unix.EEXIST)
		}
		// netlink formats the ioctl's errno into its message (%v): the
		// errno itself is not recoverable from err.
		return Link{}, false, fmt.Errorf("create TAP %s: %w", name, err)
	}
	// The creating fd is not a queue we keep: the device persists without
	// it (TUNSETPERSIST) and the data path attaches its own with water.
	for _, f := range tap.Fds {
		f.Close()
	}

	link, err := netlink.LinkByName(name)
	if err != nil {
		// Nothing to clean up by index; remove by name as a last resort.
		_ = deleteByName(name)
		return Link{}, false, fmt.Errorf("look up the new TAP %s: %w", name, err)
	}
	undo := func(cause error) (Link, bool, error) {
		if derr := netlink.LinkDel(link); derr != nil {
			return Link{}, false, fmt.Errorf("%w (and removing the half-made TAP failed: %v)", cause, derr)
		}
		return Link{}, false, cause
	}
	// netlink's LinkAdd ignores the MTU, MAC and alias of a Tuntap: they
	// are set here, on the new link, by index.
	if mtu > 0 && link.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return undo(fmt.Errorf("set mtu %d on %s: %w", mtu, name, err))
		}
	}
	if mac == nil {
		mac = RandomMAC()
	}
	if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
		return undo(fmt.Errorf("set lladdr %s on %s: %w", mac, name, err))
	}
	if err := netlink.LinkSetAlias(link, LinkAlias); err != nil {
		return undo(fmt.Errorf("set alias %s on %s: %w", LinkAlias, name, err))
	}
	if err := setNoQueue(link); err != nil {
		return undo(err)
	}
	fresh, err := netlink.LinkByIndex(link.Attrs().Index)
	if err != nil {
		return undo(fmt.Errorf("look up the new TAP %s: %w", name, err))
	}
	return linkOf(fresh), false, nil
}

// setNoQueue gives the TAP link the root qdisc noqueue in place of the
// kernel's default, and leaves a qdisc somebody chose alone.
//
// Why: a multi-queue TAP has MAX_TAP_QUEUES (256) transmit queues however
// many are attached, and bringing it up gives each one a default qdisc
// under mq, pfifo_fast's three rings of txqueuelen pointers each: 6.7 MB
// of unreclaimable kernel memory per interface (Slab grew by 853 MB for
// 128 erspanN; 7 GB for a thousand) and two thirds of the CPU it took to
// create one. A qdisc holds nothing for a TAP: tun never stops its
// transmit queues, it drops (tx_dropped) what its own ring of txqueuelen
// frames per queue cannot take, so noqueue keeps and loses the frames
// the default did (3001 frames sent into a TAP nobody read: 1000 kept,
// 2001 dropped, either way), as for veth, whose default it is. One
// difference: a sender now learns of the drop (ENOBUFS from a packet
// socket's send), where the qdisc reported success.
//
// The kernel resets the root to noop when a link changes namespace, so
// MoveTAP calls this again. Only CreateTAP's new TAP fails on its error
// (and is removed): for a TAP adopted or moved, it is best effort.
func setNoQueue(link netlink.Link) error {
	name := link.Attrs().Name
	kind, handle, err := qdiscAt(link, netlink.HANDLE_ROOT)
	if err != nil {
		return fmt.Errorf("look up the root qdisc of %s: %w", name, err)
	}
	// "": the noop of a link never up (or just moved); mq with handle 0:
	// the default the kernel attached when it came up. Anything else was
	// somebody's choice (tc gives a qdisc it adds a handle).
	if kind != "" && (kind != "mq" || handle != 0) {
		return nil
	}
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT},
		QdiscType:  "noqueue",
	}
	if err := netlink.QdiscReplace(q); err != nil {
		return fmt.Errorf("set the root qdisc of %s to noqueue: %w", name, err)
	}
	return nil
}

// DeleteTAP removes the TAP name from the calling thread's network
// namespace, detaching every queue still open on it (their reads and
// writes then fail). The error wraps unix.ENXIO when there is no link
// called name, or when the link there is not a TAP of ours, which
// DeleteTAP never removes.
func DeleteTAP(name string) error {
	link, err := ourTAP(name, false)
	if err != nil {
		return err
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("remove TAP %s: %w", name, err)
	}
	return nil
}

// SetLinkUp sets the link name in the calling thread's network namespace
// administratively up or down. The error wraps unix.ENXIO when there is no
// such link.
func SetLinkUp(name string, up bool) error {
	link, err := linkByName(name)
	if err != nil {
		return err
	}
	if up {
		err = netlink.LinkSetUp(link)
	} else {
		err = netlink.LinkSetDown(link)
	}
	if err != nil {
		return fmt.Errorf("set %s %s: %w", name, upDownWord(up), err)
	}
	return nil
}

// Queue is one queue of a TAP: ReadBatch returns frames that left the
// interface; frames go into it, as if received on the interface, through
// a FrameWriter. ReadBatch may be called concurrently with Close and with
// a FrameWriter's writes.
type Queue interface {
	// ReadBatch reads up to len(bufs) frames, frame i into
	// bufs[i][offset:] and its length into sizes[i]: it waits for the
	// first and takes the others that are already queued. It returns how
	// many it read; only one goroutine may call it at a time. Each buffer
	// should hold the MTU plus 18 bytes (Ethernet header and one VLAN
	// tag) after offset: the kernel cuts a longer frame without saying
	// so.
	ReadBatch(bufs [][]byte, sizes []int, offset int) (int, error)
	// Close detaches the queue and unblocks a pending ReadBatch; after
	// it, ReadBatch (and a FrameWriter's write into it) returns an error
	// wrapping os.ErrClosed. Frames go into a queue through a
	// FrameWriter; Close waits for the batches FrameWriters are writing.
	Close() error
}

// tapQueue is a Queue over one /dev/net/tun file descriptor, non-blocking
// and outside Go's netpoller: a reader waiting for a frame parks its
// goroutine (not an OS thread) until tapWaits (tapwait_linux.go) or Close
// wakes it.
type tapQueue struct {
	fd     int32
	closed atomic.Bool
	done   chan struct{} // closed by Close: wakes a waiting reader
	ready  chan struct{} // tapWaits' wake-up, one token at most
	armed  bool          // registered with tapWaits (by the reader)
	ev     unix.EpollEvent
	// mu is held shared across every read of fd and exclusively by
	// Close, so the number is never used after it was closed (and
	// perhaps reused). Writes are covered by tapBatches, held by every
	// tapWriter's batch, which Close also waits for (waitWriters).
	mu sync.RWMutex
}

// OpenQueue attaches one more queue to the TAP name, which must exist in
// the calling thread's network namespace and be ours (LinkAlias): the
// error wraps unix.ENXIO otherwise. The queue's file descriptor moves
// with the TAP to another namespace and keeps working there.
func OpenQueue(name string) (Queue, error) {
	// TUNSETIFF would create a missing TAP (a persistent one, as water
	// is asked to keep persistence on) and would attach to anyone's TAP
	// of that name: check that the link is ours first.
	if _, err := ourTAP(name, true); err != nil {
		return nil, err
	}
	// water opens /dev/net/tun O_NONBLOCK, runs TUNSETIFF and only then
	// wraps the fd in an os.File. water also issues TUNSETPERSIST with the
	// Persist value, so Persist must be true or attaching a queue would
	// make the device vanish with its last queue. (water leaks the fd if
	// an ioctl fails; the checks above make that a race that is not worth
	// a private copy of water.)
	ifce, err := water.New(water.Config{
		DeviceType: water.TAP,
		PlatformSpecificParams: water.PlatformSpecificParams{
			Name:       name,
			MultiQueue: true,
			Persist:    true,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("attach a queue to TAP %s: %w", name, err)
	}
	f, ok := ifce.ReadWriteCloser.(*os.File)
	if !ok {
		ifce.Close()
		return nil, fmt.Errorf("attach a queue to TAP %s: water returned a %T, not an *os.File", name, ifce.ReadWriteCloser)
	}
	defer f.Close()
	if got := ifce.Name(); got != name {
		return nil, fmt.Errorf("attach a queue to TAP %s: the kernel attached to %q", name, got)
	}
	// The queue leaves Go's netpoller: a copy of the descriptor survives
	// closing f, which removes f's from the netpoller's epoll set (the
	// queue stays attached while any descriptor of it is open). In the
	// netpoller, every frame the kernel queued while the transmit loop
	// was busy woke an idle thread blocked in epoll_wait for nothing:
	// 0.75 µs of erspand's 4.35 per encapsulated frame (README, Performance).
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("attach a queue to TAP %s: %w", name, err)
	}
	fd := -1
	cerr := rc.Control(func(raw uintptr) { fd, err = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0) })
	if cerr != nil || err != nil {
		return nil, fmt.Errorf("attach a queue to TAP %s: dup: %w", name, errors.Join(cerr, err))
	}
	// Reads must never block while they hold mu (Close waits for it).
	// water opens the device non-blocking already; say so here rather
	// than rely on it.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attach a queue to TAP %s: %w", name, err)
	}
	return &tapQueue{fd: int32(fd), done: make(chan struct{}), ready: make(chan struct{}, 1)}, nil
}

// ReadBatch reads up to len(bufs) frames leaving the TAP, frame i into
// bufs[i][offset:] with its length in sizes[i], and returns how many. It
// waits (in tapWaits) for the first, then takes what is queued until
// EAGAIN: one wake-up per burst, not per frame (design.md, Transmit).
// Only one goroutine may call it at a time. It does not
// allocate.
func (q *tapQueue) ReadBatch(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		n, errno := q.readBatch(bufs, sizes, offset)
		if n > 0 {
			return n, nil
		}
		switch errno {
		case unix.EAGAIN:
		case unix.EBADF: // closed
			return 0, os.ErrClosed
		default:
			return 0, errno
		}
		select {
		case <-q.ready:
		case <-q.done:
			return 0, os.ErrClosed
		}
	}
}

// readBatch reads what is queued, up to len(bufs) frames; with none it
// returns the errno of the read that found none, after arming tapWaits
// for the next frame when that was EAGAIN. EBADF stands for closed.
func (q *tapQueue) readBatch(bufs [][]byte, sizes []int, offset int) (int, syscall.Errno) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed.Load() {
		return 0, unix.EBADF
	}
	n := 0
	for n < len(bufs) {
		b := bufs[n][offset:]
		r, _, errno := unix.Syscall(unix.SYS_READ, uintptr(q.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch errno {
		case 0:
			sizes[n] = int(r)
			n++
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if n == 0 {
				if err := tapWaits.arm(q); err != 0 {
					return 0, err
				}
			}
		}
		if n == 0 {
			return 0, errno
		}
		break
	}
	return n, 0
}

// writeFrame writes frame into the TAP descriptor fd, which the caller
// keeps open, with one write(2). The error of a failed write is the bare
// errno: nothing is allocated per frame even when every write fails (a
// TAP removed under erspand).
func writeFrame(fd int32, frame []byte) error {
	for {
		n, err := unix.Write(int(fd), frame)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n != len(frame):
			return shortWrite(n, len(frame))
		}
		return nil
	}
}

// shortWrite is the error of a TAP write that took n of size bytes: the
// kernel takes a frame whole or not at all, so it should never happen.
func shortWrite(n, size int) error {
	return fmt.Errorf("short write to a TAP: %d of %d bytes: %w", n, size, unix.EIO)
}

// Close detaches the queue: it wakes a pending ReadBatch, waits for every
// syscall on the descriptor to end (reads, and the batch of every
// FrameWriter), and closes it. A second Close returns os.ErrClosed. The
// goroutine of a FrameWriter holding a batch must not call it before its
// Flush: it would wait for itself.
func (q *tapQueue) Close() error {
	if q.closed.Swap(true) {
		return os.ErrClosed
	}
	close(q.done)
	waitWriters()
	q.mu.Lock()
	defer q.mu.Unlock()
	tapWaits.forget(q)
	return unix.Close(int(q.fd))
}

// checkOurTAP returns nil when link is a TAP erspand made (or can use as
// if it had), and an error wrapping EEXIST naming what is in the way.
func checkOurTAP(link netlink.Link) error {
	name := link.Attrs().Name
	if !isOurs(link) {
		return fmt.Errorf("link %s exists (type %s) and is not managed by erspand "+
			"(ip_gre's fallback erspan0, say); remove or rename it: %w", name, link.Type(), unix.EEXIST)
	}
	if link.(*netlink.Tuntap).Flags&tapFlags != tapFlags {
		return fmt.Errorf("link %s has the erspand alias but is not a multi-queue TAP without "+
			"packet information; remove it: %w", name, unix.EEXIST)
	}
	return nil
}

// isOurs reports whether link is a TAP carrying our alias.
func isOurs(link netlink.Link) bool {
	tt, ok := link.(*netlink.Tuntap)
	return ok && tt.Mode == netlink.TUNTAP_MODE_TAP && link.Attrs().Alias == LinkAlias
}

// ourTAP looks up the TAP name; the error wraps ENXIO when it is missing
// or not ours. With usable, it must also take our queues (tapFlags).
func ourTAP(name string, usable bool) (netlink.Link, error) {
	link, err := linkByName(name)
	if err != nil {
		return nil, err
	}
	if !isOurs(link) {
		return nil, fmt.Errorf("link %s (type %s) is not an erspand TAP: %w", name, link.Type(), unix.ENXIO)
	}
	if usable {
		if link.(*netlink.Tuntap).Flags&tapFlags != tapFlags {
			return nil, fmt.Errorf("TAP %s is not multi-queue without packet information: %w", name, unix.ENXIO)
		}
	}
	return link, nil
}

// linkByName is netlink.LinkByName with ENXIO for a missing link.
func linkByName(name string) (netlink.Link, error) { return linkNamed(name, unix.ENXIO) }

// linkNamed looks up link name in the calling thread's namespace; a
// missing one is an error wrapping missing: ENXIO for an erspanN (the
// kernel's answer for a missing unit), ENODEV for another device.
func linkNamed(name string, missing unix.Errno) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if isLinkNotFound(err) {
			return nil, fmt.Errorf("no interface %s: %w", name, missing)
		}
		return nil, fmt.Errorf("look up interface %s: %w", name, err)
	}
	return link, nil
}

func deleteByName(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkDel(link)
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

func linkOf(link netlink.Link) Link {
	a := link.Attrs()
	return Link{Index: a.Index, Name: a.Name, MAC: a.HardwareAddr, MTU: a.MTU}
}
