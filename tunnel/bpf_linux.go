package tunnel

import (
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The eBPF programs here (monitor, span rules, the GRE receive ring) are a
// few dozen instructions each, written out as the kernel's struct
// bpf_insn and loaded with bpf(2) directly: a library such as
// cilium/ebpf would bring an assembler, an ELF loader and BTF handling
// that none of them needs.

// bpfLicense is every program's license string (NUL-terminated). "GPL"
// costs nothing and keeps every helper available.
var bpfLicense = [4]byte{'G', 'P', 'L', 0}

type bpfInsn struct {
	code uint8
	regs uint8 // dst register in the low nibble, src in the high one
	off  int16
	imm  int32
}

// insn returns one instruction: opcode, dst and src registers, offset,
// immediate.
func insn(code, dst, src uint8, off int16, imm int32) bpfInsn {
	return bpfInsn{code: code, regs: src<<4 | dst, off: off, imm: imm}
}

// The pointer members of union bpf_attr (__aligned_u64 in the kernel)
// are unsafe.Pointer here, not integers: what they point to may be on the
// caller's stack (a map key, the verifier's log), which Go moves when the
// stack grows, as it may on the call into bpfRetry, after the attr was
// made; the stack copier updates pointers, not integers, and the garbage
// collector keeps what they point to alive. (As 8 bytes, they assume a
// 64-bit platform, as the rest of this package's kernel structures do.)

// bpfProgLoadAttr is the BPF_PROG_LOAD member of union bpf_attr, up to
// expected_attach_type. The kernel takes a shorter attr than its own and
// zero-fills the rest, so fields added since need not be here.
type bpfProgLoadAttr struct {
	progType           uint32
	insnCnt            uint32
	insns              unsafe.Pointer
	license            unsafe.Pointer
	logLevel           uint32
	logSize            uint32
	logBuf             unsafe.Pointer
	kernVersion        uint32
	progFlags          uint32
	progName           [unix.BPF_OBJ_NAME_LEN]byte
	progIfindex        uint32
	expectedAttachType uint32
}

// RaiseMemlock lifts RLIMIT_MEMLOCK, as libbpf does: kernels before 5.11
// charge eBPF maps to it (64 KiB by default then), and the GRE sockets'
// rings (32 MiB by default) would be refused. Later kernels charge the
// memory cgroup instead and ignore it. Without CAP_SYS_RESOURCE (some
// containers) only the soft limit can go, up to the hard one; should the
// ring still be refused (EPERM), ListenGRE falls back to recvmmsg and
// says why. erspand calls it once, at start.
func RaiseMemlock() {
	if unix.Setrlimit(unix.RLIMIT_MEMLOCK, &unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}) == nil {
		return
	}
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim)
	}
}

// loadProgram loads a program of type progType with bpf(2) and returns its
// fd (O_CLOEXEC already set). name is the kernel's name of it,
// [A-Za-z0-9_.] and at most 15 bytes. When the verifier refuses it, the
// error ends with the verifier's reason (verifierReason). (Kernels before
// 5.11 charge BPF memory to RLIMIT_MEMLOCK and may want it raised; later
// ones charge the memory cgroup.)
func loadProgram(progType uint32, insns []bpfInsn, name string) (int, error) {
	attr := bpfProgLoadAttr{
		progType: progType,
		insnCnt:  uint32(len(insns)),
		insns:    unsafe.Pointer(&insns[0]),
		license:  unsafe.Pointer(&bpfLicense[0]),
	}
	copy(attr.progName[:15], name)
	fd, errno := bpfRetry(unix.BPF_PROG_LOAD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if errno == unix.EINVAL || errno == unix.EACCES {
		// Load again for the verifier's reason: the log costs only here.
		log := make([]byte, 1<<16)
		attr.logLevel, attr.logSize = 1, uint32(len(log))
		attr.logBuf = unsafe.Pointer(&log[0])
		fd2, again := bpfRetry(unix.BPF_PROG_LOAD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
		if again == 0 {
			// Loaded this time (the refusal was passing): keep it.
			return fd2, nil
		}
		if last := verifierReason(log); last != "" {
			return -1, fmt.Errorf("load eBPF program %s (bpf BPF_PROG_LOAD): %w (verifier: %s)", name, errno, last)
		}
	}
	if errno != 0 {
		return -1, fmt.Errorf("load eBPF program %s (bpf BPF_PROG_LOAD): %w", name, errno)
	}
	return fd, nil
}

// bpfRetry is bpf(2) with cmd and attr, again while it fails with EAGAIN
// or EINTR. The verifier gives up with EAGAIN when a signal is pending for
// the thread (do_check's signal_pending test), and Go's runtime signals its
// threads (SIGURG) to preempt goroutines: a load fails now and then for no
// fault of the program, as it did creating the 279th of 512 interfaces in
// a row. Loading again is what libbpf and cilium/ebpf do; the bound only
// keeps a loop finite.
func bpfRetry(cmd uintptr, attr unsafe.Pointer, size uintptr) (int, unix.Errno) {
	var (
		fd    uintptr
		errno unix.Errno
	)
	for range 1000 {
		fd, _, errno = unix.Syscall(unix.SYS_BPF, cmd, uintptr(attr), size)
		if errno != unix.EAGAIN && errno != unix.EINTR {
			break
		}
	}
	return int(fd), errno
}

// verifierReason returns the verifier's reason for a refusal from its
// NUL-terminated log b: the last non-empty line, but for the statistics
// line ("processed N insns ...") the kernel ends the log with.
func verifierReason(b []byte) string {
	for i, c := range b {
		if c == 0 {
			b = b[:i]
			break
		}
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := lines[i]; l != "" && !strings.HasPrefix(l, "processed ") {
			return l
		}
	}
	return ""
}

// bpfMapCreateAttr is the BPF_MAP_CREATE member of union bpf_attr, up to
// map_name.
type bpfMapCreateAttr struct {
	mapType    uint32
	keySize    uint32
	valueSize  uint32
	maxEntries uint32
	mapFlags   uint32
	innerMapFD uint32
	numaNode   uint32
	mapName    [unix.BPF_OBJ_NAME_LEN]byte
}

// createMap makes a BPF map and returns its fd (O_CLOEXEC already set).
func createMap(mapType, keySize, valueSize, maxEntries, flags uint32, name string) (int, error) {
	attr := bpfMapCreateAttr{mapType: mapType, keySize: keySize, valueSize: valueSize,
		maxEntries: maxEntries, mapFlags: flags}
	copy(attr.mapName[:15], name)
	fd, errno := bpfRetry(unix.BPF_MAP_CREATE, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if errno != 0 {
		return -1, fmt.Errorf("create eBPF map %s (bpf BPF_MAP_CREATE): %w", name, errno)
	}
	return fd, nil
}

// bpfMapElemAttr is the BPF_MAP_*_ELEM member of union bpf_attr.
type bpfMapElemAttr struct {
	mapFD uint32
	_     uint32
	key   unsafe.Pointer
	value unsafe.Pointer
	flags uint64
}

// lookupUint64 returns the uint64 at index key of array map fd.
func lookupUint64(fd int, key uint32) (uint64, error) {
	var v uint64
	attr := bpfMapElemAttr{mapFD: uint32(fd), key: unsafe.Pointer(&key), value: unsafe.Pointer(&v)}
	if _, errno := bpfRetry(unix.BPF_MAP_LOOKUP_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); errno != 0 {
		return 0, fmt.Errorf("read eBPF map (bpf BPF_MAP_LOOKUP_ELEM): %w", errno)
	}
	return v, nil
}
