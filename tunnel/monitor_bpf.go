package tunnel

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// monitorFilterName names our tc filter, so it can be found again.
const monitorFilterName = "erspan-monitor"

// SetMonitor turns monitor mode on or off on link name (design.md,
// Interfaces). On: a clsact qdisc with an eBPF program that drops every
// frame at tc ingress, in direct-action mode. Packet sockets (tcpdump, Zeek,
// Suricata's af-packet) get their copy before tc ingress runs; the IP stack
// and a bridge come after it and never see the frame. IPv6 is disabled on
// the device meanwhile, so it sends no SLAAC, DAD or MLD of its own. Off:
// the qdisc goes (and the filter with it), IPv6 is enabled again.
// Idempotent.
func SetMonitor(name string, on bool) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if on {
		if err := setIPv6(name, false); err != nil {
			return err
		}
		return attachMonitor(l)
	}
	qdisc := clsact(l.Attrs().Index)
	if err := netlink.QdiscDel(qdisc); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("remove the monitor qdisc: %w", err)
	}
	return setIPv6(name, true)
}

func clsact(index int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

func monitorFilter(index, fd int) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: index,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Handle:    netlink.MakeHandle(0, 1),
			Protocol:  unix.ETH_P_ALL,
			Priority:  1,
		},
		Fd:           fd,
		Name:         monitorFilterName,
		DirectAction: true,
	}
}

func attachMonitor(l netlink.Link) error {
	idx := l.Attrs().Index
	if err := netlink.QdiscReplace(clsact(idx)); err != nil {
		return fmt.Errorf("add a clsact qdisc: %w", err)
	}
	fd, err := loadDropProgram()
	if err != nil {
		return err
	}
	defer unix.Close(fd) // the filter holds its own reference
	// Replace, with a fixed handle and priority: on twice is one filter.
	if err := netlink.FilterReplace(monitorFilter(idx, fd)); err != nil {
		return fmt.Errorf("attach the monitor filter: %w", err)
	}
	return nil
}

// MonitorEnabled reports whether our monitor filter is attached to link
// name.
func MonitorEnabled(name string) (bool, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return false, fmt.Errorf("link %s: %w", name, err)
	}
	filters, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return false, nil // no clsact qdisc
		}
		return false, err
	}
	for _, f := range filters {
		if b, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(b.Name, monitorFilterName) {
			return true, nil
		}
	}
	return false, nil
}

// bpfProgLoadAttr is the part of union bpf_attr that BPF_PROG_LOAD reads
// (include/uapi/linux/bpf.h), up to prog_name; the kernel takes the rest as
// zero.
type bpfProgLoadAttr struct {
	progType    uint32
	insnCnt     uint32
	insns       uint64
	license     uint64
	logLevel    uint32
	logSize     uint32
	logBuf      uint64
	kernVersion uint32
	progFlags   uint32
	progName    [16]byte
}

const (
	bpfProgTypeSchedCls = 3
	tcActShot           = 2
)

// dropProgram is `r0 = TC_ACT_SHOT; exit`. Each struct bpf_insn is {code
// u8; dst:4 src:4; off s16; imm s32}, little endian: BPF_ALU64|BPF_MOV|BPF_K
// (0xb7) into r0 with imm TC_ACT_SHOT, then BPF_JMP|BPF_EXIT (0x95).
// Package variables, because the kernel reads them through pointers held
// as integers, which a goroutine stack move would not update.
var (
	dropProgram = [2]uint64{0xb7 | tcActShot<<32, 0x95}
	gplLicense  = [4]byte{'G', 'P', 'L', 0}
)

// loadDropProgram loads dropProgram as a sched_cls program. Two
// instructions do not justify an eBPF library.
func loadDropProgram() (int, error) {
	attr := bpfProgLoadAttr{
		progType: bpfProgTypeSchedCls,
		insnCnt:  uint32(len(dropProgram)),
		insns:    uint64(uintptr(unsafe.Pointer(&dropProgram[0]))),
		license:  uint64(uintptr(unsafe.Pointer(&gplLicense[0]))),
	}
	copy(attr.progName[:], "erspan_monitor")
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return -1, fmt.Errorf("load the monitor eBPF program: %w", errno)
	}
	return int(fd), nil
}

// setIPv6 enables or disables IPv6 on the link in the calling thread's
// network namespace. A kernel without IPv6 has nothing to disable.
func setIPv6(name string, enable bool) error {
	v := "1"
	if enable {
		v = "0"
	}
	err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte(v), 0)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("disable_ipv6=%s on %s: %w", v, name, err)
	}
	return nil
}
