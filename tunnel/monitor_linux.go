package tunnel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// monitorFilterName is the name (TCA_BPF_NAME) of our tc filter: it is how
// MonitorEnabled and SetMonitor recognise the filter, also one a previous
// daemon attached.
const monitorFilterName = "erspan-monitor"

// monitorProgName is the kernel's name of the eBPF program (bpftool shows
// it). The kernel allows only [A-Za-z0-9_.] there, hence no '-'. It is how
// a tcx attachment is recognised as ours, also one a previous daemon made.
const monitorProgName = "erspan_monitor"

// tcActShot is TC_ACT_SHOT from linux/pkt_cls.h: a direct-action tc program
// returning it drops the packet.
const tcActShot = 2

// monitorInsns is the whole monitor program, two eBPF instructions:
//
//	r0 = TC_ACT_SHOT   (BPF_ALU64 | BPF_MOV | BPF_K, dst r0)
//	exit               (BPF_JMP | BPF_EXIT)
//
// Each is the kernel's struct bpf_insn: opcode, dst and src register
// nibbles, 16-bit offset, 32-bit immediate.
var monitorInsns = [2]bpfInsn{
	{code: unix.BPF_ALU64 | unix.BPF_MOV | unix.BPF_K, imm: tcActShot},
	{code: unix.BPF_JMP | unix.BPF_EXIT},
}

// SetMonitor turns monitor mode (design.md, Interfaces) on or off on the
// link name in the calling thread's network namespace.
//
// On: an eBPF program of type BPF_PROG_TYPE_SCHED_CLS that drops every
// frame (TC_ACT_SHOT) at the link's tc ingress: attached with tcx
// (Linux 6.6+) ahead of any program there, or, on a kernel without tcx or
// without CAP_SYS_ADMIN (see tcxMonitors), in a clsact qdisc (reused if
// there is one) as a cls_bpf filter in direct-action mode. tcx costs
// less per frame: it runs the program straight from the device's hook,
// where a filter is reached through the qdisc and two lists, structures
// of each device's own that are cold in the cache when frames go to many
// interfaces (README, Performance).
// Packet sockets (tcpdump, Zeek, Suricata) still see every frame, because
// the kernel hands frames to them before tc ingress; the IP stack and a
// bridge never do. IPv6 is disabled on the link (disable_ipv6 = 1), so
// that it sends no SLAAC, DAD or MLD of its own into the capture.
//
// Off: our program is removed, from tcx and from a clsact qdisc (where an
// older erspand, or a kernel without tcx, put it), and the clsact qdisc
// with it when no other filter is left on it (the qdisc carries no owner,
// so "nothing else uses it" stands for "we added it"); disable_ipv6 = 0.
//
// SetMonitor is idempotent: turning it on twice leaves one program
// attached. The error wraps unix.ENXIO when there is no such link,
// otherwise the errno of the step that failed.
func SetMonitor(name string, on bool) error {
	link, err := linkByName(name)
	if err != nil {
		return err
	}
	if !on {
		if err := detachMonitor(link); err != nil {
			return err
		}
		return setDisableIPv6(name, false)
	}
	attached, err := attachMonitor(link)
	if err != nil {
		return err
	}
	if err := setDisableIPv6(name, true); err != nil {
		if attached {
			_ = detachMonitor(link)
		}
		return err
	}
	return nil
}

// MonitorEnabled reports whether our monitor program is attached to the
// link name in the calling thread's network namespace, with tcx or as a
// clsact filter.
func MonitorEnabled(name string) (bool, error) {
	link, err := linkByName(name)
	if err != nil {
		return false, err
	}
	return monitorAttached(link)
}

// monitorAttached reports whether our monitor program is at the link's
// ingress, either way.
func monitorAttached(link netlink.Link) (bool, error) {
	ids, err := tcxMonitors(link)
	if err != nil || len(ids) > 0 {
		return len(ids) > 0, err
	}
	_, fs, err := ourFilters(link)
	return len(fs) > 0, err
}

// ourFilters returns the link's clsact qdisc (nil when it has none) and
// our monitor filters on it. An ingress qdisc, which cannot hold our
// filter, counts as none.
func ourFilters(link netlink.Link) (netlink.Qdisc, []netlink.Filter, error) {
	q, err := findClsact(link)
	if errors.Is(err, unix.EBUSY) {
		return nil, nil, nil
	}
	if err != nil || q == nil {
		return nil, nil, err
	}
	fs, err := monitorFilters(link)
	return q, fs, err
}

// attachMonitor attaches the program unless it is there already, and
// reports whether it did.
func attachMonitor(link netlink.Link) (bool, error) {
	// Loaded first, so that tcxMonitors knows our program by its ID.
	fd, err := monitorProgFD()
	if err != nil {
		return false, err
	}
	if on, err := monitorAttached(link); err != nil || on {
		return false, err
	}
	// tcx only where erspand can tell its programs from others' there
	// (tcxMonitors): a monitor program it could not find again would
	// stay when monitor mode goes off.
	if tcxSupported() && effectiveCap(unix.CAP_SYS_ADMIN) {
		if err := tcxAttachFirst(link.Attrs().Index, fd, unix.BPF_TCX_INGRESS); err != nil {
			return false, fmt.Errorf("attach the monitor program to %s ingress: %w", link.Attrs().Name, err)
		}
		return true, nil
	}
	if err := attachMonitorFilter(link, fd); err != nil {
		return false, err
	}
	return true, nil
}

// attachMonitorFilter attaches program fd as our cls_bpf filter at the
// ingress of the link's clsact qdisc, adding the qdisc if it has none (an
// ingress qdisc in its place is refused there, with EBUSY).
func attachMonitorFilter(link netlink.Link, fd int) error {
	q, addedQdisc, err := ensureClsact(link)
	if err != nil {
		return err
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: link.Attrs().Index,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Protocol:  unix.ETH_P_ALL,
			// Priority 0 lets the kernel choose one below (i.e. ahead of)
			// any filter already there, so that nothing it does runs first.
			Priority: 0,
		},
		Fd:           fd,
		Name:         monitorFilterName,
		DirectAction: true,
	}
	if err := netlink.FilterAdd(filter); err != nil {
		if addedQdisc {
			_ = netlink.QdiscDel(q)
		}
		return fmt.Errorf("attach the monitor filter to %s ingress: %w", link.Attrs().Name, err)
	}
	return nil
}

// tcxMonitors returns the IDs of our monitor programs at the link's tcx
// ingress: one, unless something went wrong before; none, without an
// error, on a kernel without tcx. This process's program is known by its
// ID; another is ours by its name (one a previous erspand attached),
// which the kernel shows only with CAP_SYS_ADMIN: without it, such a
// program is left alone as somebody else's (attachMonitor uses tcx only
// with CAP_SYS_ADMIN, so only an erspand that had it, restarted without
// it, meets that case).
func tcxMonitors(link netlink.Link) ([]uint32, error) {
	if !tcxSupported() {
		return nil, nil
	}
	ids, err := tcxProgIDs(link.Attrs().Index, unix.BPF_TCX_INGRESS)
	if err != nil {
		return nil, fmt.Errorf("list the tcx programs of %s: %w", link.Attrs().Name, err)
	}
	own, _ := ownMonitorProg()
	var ours []uint32
	for _, id := range ids {
		if id == own {
			ours = append(ours, id)
			continue
		}
		name, err := progNameByID(id)
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EPERM):
			// Detached and freed since the query; or not ours to know.
			continue
		case err != nil:
			return nil, fmt.Errorf("the tcx programs of %s: %w", link.Attrs().Name, err)
		case name == monitorProgName:
			ours = append(ours, id)
		}
	}
	return ours, nil
}

// detachMonitor removes our program(s) from tcx and our filter(s) from the
// clsact qdisc, and then the clsact qdisc if nothing else is attached to
// it.
func detachMonitor(link netlink.Link) error {
	name := link.Attrs().Name
	ids, err := tcxMonitors(link)
	if err != nil {
		return err
	}
	own, ownFD := ownMonitorProg()
	for _, id := range ids {
		fd := ownFD
		if id != own {
			if fd, err = progByID(id); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue // gone since tcxMonitors
				}
				return fmt.Errorf("remove the monitor program from %s ingress: %w", name, err)
			}
		}
		err := tcxDetach(link.Attrs().Index, fd, unix.BPF_TCX_INGRESS)
		if id != own {
			unix.Close(fd)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove the monitor program from %s ingress: %w", name, err)
		}
	}
	q, fs, err := ourFilters(link)
	if err != nil {
		return err
	}
	for _, f := range fs {
		if err := netlink.FilterDel(f); err != nil {
			return fmt.Errorf("remove the monitor filter from %s: %w", name, err)
		}
	}
	if len(fs) == 0 {
		return nil // not ours to remove
	}
	return removeClsactIfEmpty(link, q)
}

// ensureClsact returns the link's clsact qdisc, adding one (added true)
// when it has none. Span rules and monitor mode (on a kernel without tcx)
// share it; an existing one may carry somebody else's filters and is used
// as it is.
func ensureClsact(link netlink.Link) (q netlink.Qdisc, added bool, err error) {
	if q, err = findClsact(link); err != nil || q != nil {
		return q, false, err
	}
	q = &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_CLSACT,
	}}
	if err := netlink.QdiscAdd(q); err != nil {
		return nil, false, fmt.Errorf("add clsact qdisc to %s: %w", link.Attrs().Name, err)
	}
	return q, true, nil
}

// removeClsactIfEmpty removes the link's clsact qdisc q once no filter is
// left on either of its hooks, ours or anybody's.
func removeClsactIfEmpty(link netlink.Link, q netlink.Qdisc) error {
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		others, err := filterList(link, parent)
		if err != nil {
			return err
		}
		if len(others) > 0 {
			return nil
		}
	}
	if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("remove the clsact qdisc from %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// findClsact returns the link's clsact qdisc, or nil when it has none. An
// "ingress" qdisc occupies the same slot and cannot hold our filter: that
// gives an error wrapping EBUSY.
func findClsact(link netlink.Link) (netlink.Qdisc, error) {
	name := link.Attrs().Name
	kind, handle, err := qdiscAt(link, netlink.HANDLE_CLSACT)
	switch {
	case err != nil:
		return nil, fmt.Errorf("look up the clsact qdisc of %s: %w", name, err)
	case kind == "clsact":
		return &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: link.Attrs().Index, Handle: handle, Parent: netlink.HANDLE_CLSACT}}, nil
	case kind != "":
		return nil, fmt.Errorf("%s has a %s qdisc where erspan's span rules (and monitor mode without tcx) need clsact (remove it: tc qdisc del dev %s %s): %w", name, kind, name, kind, unix.EBUSY)
	}
	return nil, nil
}

// qdiscAt returns the kind and handle of the link's qdisc at parent
// (netlink.HANDLE_ROOT or HANDLE_CLSACT), kind "" when the slot is empty:
// never filled, or holding the noop qdisc of a removed one or of a device
// never up.
//
// It asks for the one qdisc (RTM_GETQDISC naming the device and the
// slot) rather than listing them: the kernel answers a qdisc dump with
// every device's qdiscs whatever device it names, so listing cost ~80 µs
// per up interface of the namespace, on every create: minutes of CPU for
// a thousand interfaces.
func qdiscAt(link netlink.Link, parent uint32) (kind string, handle uint32, err error) {
	// The kernel answers a get as it reports a change, to the tc
	// multicast group, and to the asker only with NLM_F_ECHO
	// (tc_get_qdisc, qdisc_notify). NLM_F_ACK: for a qdisc it hides
	// from dumps (noop) nothing is sent, and the acknowledgement ends
	// the wait.
	req := nl.NewNetlinkRequest(unix.RTM_GETQDISC, unix.NLM_F_ECHO|unix.NLM_F_ACK)
	req.AddData(&nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: int32(link.Attrs().Index), Parent: parent})
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWQDISC)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) {
		// ENOENT: no ingress slot yet, never had one. EINVAL: the slot
		// holds the noop qdisc, which kernels that report nothing for it
		// refuse as an empty answer (qdisc_notify).
		return "", 0, nil
	}
	if err != nil {
		return "", 0, err
	}
	for _, m := range msgs {
		if len(m) < nl.SizeofTcMsg {
			continue
		}
		tcm := nl.DeserializeTcMsg(m)
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofTcMsg:])
		if err != nil {
			return "", 0, err
		}
		for _, a := range attrs {
			if a.Attr.Type == nl.TCA_KIND {
				kind = strings.TrimRight(string(a.Value), "\x00")
			}
		}
		if kind == "noop" {
			kind = ""
		}
		return kind, tcm.Handle, nil
	}
	return "", 0, nil
}

// monitorFilters returns our filters at the link's clsact ingress (one,
// unless something went wrong before).
func monitorFilters(link netlink.Link) ([]netlink.Filter, error) {
	fs, err := filterList(link, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return nil, err
	}
	var ours []netlink.Filter
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == monitorFilterName {
			ours = append(ours, f)
		}
	}
	return ours, nil
}

func filterList(link netlink.Link, parent uint32) ([]netlink.Filter, error) {
	var fs []netlink.Filter
	var err error
	for range 3 {
		fs, err = netlink.FilterList(link, parent)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list the tc filters of %s: %w", link.Attrs().Name, err)
	}
	return fs, nil
}

// monitorProg is the drop-everything program, loaded once per process:
// every monitor program or filter this process attaches runs it (one
// program and JIT image in the kernel, not one per interface; a create
// runs no verifier). What a previous erspand attached keeps its program
// until it goes. The fd stays open for the process's life; each attachment
// holds a reference of its own.
var monitorProg struct {
	mu     sync.Mutex
	fd     int
	id     uint32 // the kernel's ID of it
	loaded bool
}

// monitorProgFD returns the fd of monitorProg, loading it at the first
// call (and at the next, should a load fail).
func monitorProgFD() (int, error) {
	monitorProg.mu.Lock()
	defer monitorProg.mu.Unlock()
	if !monitorProg.loaded {
		fd, err := loadProgram(unix.BPF_PROG_TYPE_SCHED_CLS, monitorInsns[:], monitorProgName)
		if err != nil {
			return -1, err
		}
		id, _, err := progInfo(fd)
		if err != nil {
			unix.Close(fd)
			return -1, err
		}
		monitorProg.fd, monitorProg.id, monitorProg.loaded = fd, id, true
	}
	return monitorProg.fd, nil
}

// ownMonitorProg returns the ID and fd of monitorProg, 0 and -1 until it
// is loaded.
func ownMonitorProg() (id uint32, fd int) {
	monitorProg.mu.Lock()
	defer monitorProg.mu.Unlock()
	if !monitorProg.loaded {
		return 0, -1
	}
	return monitorProg.id, monitorProg.fd
}

// setDisableIPv6 writes net.ipv6.conf.NAME.disable_ipv6. /proc/sys/net
// answers for the network namespace of the thread that opens the file, so
// this acts on the calling thread's namespace like the netlink calls. A
// kernel without IPv6 has no such files and nothing to silence.
func setDisableIPv6(name string, disable bool) error {
	conf := "/proc/sys/net/ipv6/conf"
	if _, err := os.Stat(conf); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	v := []byte("0\n")
	if disable {
		v[0] = '1'
	}
	f, err := os.OpenFile(filepath.Join(conf, name, "disable_ipv6"), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("disable_ipv6 on %s: %w", name, err)
	}
	_, err = f.Write(v)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("disable_ipv6 on %s: %w", name, err)
	}
	return nil
}
