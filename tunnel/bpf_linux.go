package tunnel

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
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

// bpfProgLoadAttr is the BPF_PROG_LOAD member of union bpf_attr, up to
// expected_attach_type. The kernel takes a shorter attr than its own and
// zero-fills the rest, so fields added since need not be here.
type bpfProgLoadAttr struct {
	progType           uint32
	insnCnt            uint32
	insns              uint64 // pointer
	license            uint64 // pointer
	logLevel           uint32
	logSize            uint32
	logBuf             uint64 // pointer
	kernVersion        uint32
	progFlags          uint32
	progName           [unix.BPF_OBJ_NAME_LEN]byte
	progIfindex        uint32
	expectedAttachType uint32
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
		insns:    uint64(uintptr(unsafe.Pointer(&insns[0]))),
		license:  uint64(uintptr(unsafe.Pointer(&bpfLicense[0]))),
	}
	copy(attr.progName[:15], name)
	fd, errno := bpfRetry(unix.BPF_PROG_LOAD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if errno == unix.EINVAL || errno == unix.EACCES {
		// Load again for the verifier's reason: the log costs only here.
		log := make([]byte, 1<<16)
		attr.logLevel, attr.logSize = 1, uint32(len(log))
		attr.logBuf = uint64(uintptr(unsafe.Pointer(&log[0])))
		fd2, again := bpfRetry(unix.BPF_PROG_LOAD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
		runtime.KeepAlive(log)
		runtime.KeepAlive(insns)
		if again == 0 {
			// Loaded this time (the refusal was passing): keep it.
			return fd2, nil
		}
		if last := verifierReason(log); last != "" {
			return -1, fmt.Errorf("load eBPF program %s (bpf BPF_PROG_LOAD): %w (verifier: %s)", name, errno, last)
		}
	}
	// The kernel reads insns through an integer address the GC does not
	// see: keep the slice alive until bpf(2) returned.
	runtime.KeepAlive(insns)
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
	key   uint64 // pointer
	value uint64 // pointer
	flags uint64
}

// sumPerCPU returns the sum of the per-CPU uint64 values at index key of
// per-CPU array map fd, read into vals, which has one element per
// possible CPU (possibleCPUs): the kernel copies out that many.
func sumPerCPU(fd int, key uint32, vals []uint64) (uint64, error) {
	attr := bpfMapElemAttr{mapFD: uint32(fd), key: uint64(uintptr(unsafe.Pointer(&key))),
		value: uint64(uintptr(unsafe.Pointer(&vals[0])))}
	_, errno := bpfRetry(unix.BPF_MAP_LOOKUP_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(&key)
	runtime.KeepAlive(vals)
	if errno != 0 {
		return 0, fmt.Errorf("read eBPF map (bpf BPF_MAP_LOOKUP_ELEM): %w", errno)
	}
	var sum uint64
	for _, v := range vals {
		sum += v
	}
	return sum, nil
}

// possibleCPUs is the number of CPUs the kernel may ever bring up
// (num_possible_cpus), which sizes what it copies out of a per-CPU map,
// from /sys/devices/system/cpu/possible.
var possibleCPUs = sync.OnceValues(func() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return 0, fmt.Errorf("the possible CPUs: %w", err)
	}
	n, err := countCPUList(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("the possible CPUs (/sys/devices/system/cpu/possible): %w", err)
	}
	return n, nil
})

// countCPUList counts the CPUs of a kernel CPU list such as "0-3,8,10-11".
func countCPUList(list string) (int, error) {
	n := 0
	for _, r := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a {
			return 0, fmt.Errorf("bad CPU list %q: %w", list, unix.EINVAL)
		}
		n += b - a + 1
	}
	return n, nil
}
