package tunnel

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tcx (Linux 6.6+) attaches eBPF programs to a device's tc ingress or
// egress without a qdisc: the kernel runs them straight from the device's
// hook, ahead of any clsact qdisc's filters, where a cls_bpf filter is
// reached through the clsact qdisc, its filter list and cls_bpf's own
// list, each a structure of the device's own. With a thousand devices
// those are cold in the cache for every frame (README, Performance).
// Attachments are made with BPF_PROG_ATTACH (not a bpf link), so they
// stay until removed or the device goes; unlike a clsact qdisc, which a
// move to another namespace removes, they go with the device.

// bpfProgAttachAttr is the BPF_PROG_ATTACH / BPF_PROG_DETACH member of
// union bpf_attr.
type bpfProgAttachAttr struct {
	targetIfindex    uint32
	attachBPFFD      uint32
	attachType       uint32
	attachFlags      uint32
	replaceBPFFD     uint32
	relativeFD       uint32
	expectedRevision uint64
}

// bpfProgQueryAttr is the BPF_PROG_QUERY member of union bpf_attr.
type bpfProgQueryAttr struct {
	targetIfindex   uint32
	attachType      uint32
	queryFlags      uint32
	attachFlags     uint32
	progIDs         unsafe.Pointer
	count           uint32
	_               uint32
	progAttachFlags unsafe.Pointer
	linkIDs         unsafe.Pointer
	linkAttachFlags unsafe.Pointer
	revision        uint64
}

// bpfGetIDAttr is the BPF_PROG_GET_FD_BY_ID member of union bpf_attr.
type bpfGetIDAttr struct {
	id        uint32
	nextID    uint32
	openFlags uint32
}

// bpfInfoAttr is the BPF_OBJ_GET_INFO_BY_FD member of union bpf_attr.
type bpfInfoAttr struct {
	fd      uint32
	infoLen uint32
	info    unsafe.Pointer
}

// bpfProgInfo is struct bpf_prog_info up to its name; the kernel fills
// what fits in the length it is given.
type bpfProgInfo struct {
	progType     uint32
	id           uint32
	tag          [unix.BPF_TAG_SIZE]byte
	jitedLen     uint32
	xlatedLen    uint32
	jitedInsns   uint64 // a buffer's address, 0: none given (else unsafe.Pointer)
	xlatedInsns  uint64 // the same
	loadTime     uint64
	createdByUID uint32
	nrMapIDs     uint32
	mapIDs       uint64 // the same
	name         [unix.BPF_OBJ_NAME_LEN]byte
}

// tcxSupported reports whether the kernel has tcx, asked once, of the
// loopback device (ifindex 1 in every namespace). The answer decides;
// an EINVAL from a later query or attach is an error of its own, not a
// missing tcx. A variable: tests stand in a kernel without it.
var tcxSupported = sync.OnceValue(func() bool { return tcxHas(unix.BPF_TCX_INGRESS) })

// tcxHas reports whether the kernel knows attachType, asking of lo: a
// kernel without tcx (before 6.6) refuses the attach type with EINVAL.
func tcxHas(attachType uint32) bool {
	_, err := tcxProgIDs(1, attachType)
	return !errors.Is(err, unix.EINVAL)
}

// tcxAttachFirst attaches program fd to the tcx hook attachType
// (unix.BPF_TCX_INGRESS or _EGRESS) of device ifindex in the calling
// thread's namespace, ahead of every program already there.
func tcxAttachFirst(ifindex, fd int, attachType uint32) error {
	attr := bpfProgAttachAttr{targetIfindex: uint32(ifindex), attachBPFFD: uint32(fd),
		attachType: attachType, attachFlags: unix.BPF_F_BEFORE}
	if _, errno := bpfRetry(unix.BPF_PROG_ATTACH, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); errno != 0 {
		return fmt.Errorf("bpf BPF_PROG_ATTACH: %w", errno)
	}
	return nil
}

// tcxDetach detaches program fd from the tcx hook attachType of device
// ifindex. The kernel reads attach_bpf_fd 0 as "no program given" and
// would detach the last one, whosever it is; fd is never 0 here, as the
// Go runtime opens /dev/null on any of descriptors 0 to 2 that a process
// starts without (runtime.checkfds), and nothing here closes stdin.
func tcxDetach(ifindex, fd int, attachType uint32) error {
	attr := bpfProgAttachAttr{targetIfindex: uint32(ifindex), attachBPFFD: uint32(fd), attachType: attachType}
	if _, errno := bpfRetry(unix.BPF_PROG_DETACH, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); errno != 0 {
		return fmt.Errorf("bpf BPF_PROG_DETACH: %w", errno)
	}
	return nil
}

// effectiveCap reports whether the calling thread has capability c in
// its effective set (capabilities are per thread).
func effectiveCap(c uint) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

// tcxProgIDs returns the IDs of the programs at the tcx hook attachType of
// device ifindex, in the order they run.
func tcxProgIDs(ifindex int, attachType uint32) ([]uint32, error) {
	ids := make([]uint32, 8)
	for {
		attr := bpfProgQueryAttr{targetIfindex: uint32(ifindex), attachType: attachType,
			progIDs: unsafe.Pointer(&ids[0]), count: uint32(len(ids))}
		_, errno := bpfRetry(unix.BPF_PROG_QUERY, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
		switch {
		case errno == unix.ENOSPC && int(attr.count) > len(ids):
			// More than there was room for; the kernel said how many.
			ids = make([]uint32, attr.count)
			continue
		case errno != 0:
			return nil, fmt.Errorf("bpf BPF_PROG_QUERY: %w", errno)
		}
		return ids[:attr.count], nil
	}
}

// progByID opens the program with the given ID (an fd the caller closes).
// The kernel allows it only with CAP_SYS_ADMIN (EPERM otherwise).
func progByID(id uint32) (int, error) {
	attr := bpfGetIDAttr{id: id}
	fd, errno := bpfRetry(unix.BPF_PROG_GET_FD_BY_ID, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if errno != 0 {
		return -1, fmt.Errorf("eBPF program %d (bpf BPF_PROG_GET_FD_BY_ID): %w", id, errno)
	}
	return fd, nil
}

// progInfo returns the ID and the kernel name of program fd.
func progInfo(fd int) (id uint32, name string, err error) {
	var info bpfProgInfo
	attr := bpfInfoAttr{fd: uint32(fd), infoLen: uint32(unsafe.Sizeof(info)), info: unsafe.Pointer(&info)}
	if _, errno := bpfRetry(unix.BPF_OBJ_GET_INFO_BY_FD, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); errno != 0 {
		return 0, "", fmt.Errorf("eBPF program info (bpf BPF_OBJ_GET_INFO_BY_FD): %w", errno)
	}
	return info.id, unix.ByteSliceToString(info.name[:]), nil
}

// progNameByID returns the kernel name of the program with the given ID.
func progNameByID(id uint32) (string, error) {
	fd, err := progByID(id)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	_, name, err := progInfo(fd)
	return name, err
}
