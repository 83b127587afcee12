package tunnel

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestVerifierReason: the last line of the log before its NUL, but for
// the statistics line the verifier ends it with.
func TestVerifierReason(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"0: (95) exit\nR0 !read_ok\nprocessed 1 insns (limit 1000000) max_states_per_insn 0\n\x00", "R0 !read_ok"},
		{"first\nsecond\nthird\n\x00\x00\x00", "third"},
		{"one\ntwo\n\n\n\x00stale\n", "two"}, // after the NUL: an earlier, longer log
		{"no newline\x00", "no newline"},
		{"no NUL", "no NUL"},
		{"processed 3 insns\n\x00", ""},
		{"\n\n\x00", ""},
		{"\x00last\n", ""},
		{"", ""},
	} {
		if got := verifierReason([]byte(c.in)); got != c.want {
			t.Errorf("verifierReason(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestLoadProgramVerifierLog: a program the verifier refuses (it exits
// with R0 never set) fails to load with the kernel's errno and the
// verifier's reason.
func TestLoadProgramVerifierLog(t *testing.T) {
	requireRoot(t)
	fd, err := loadProgram(unix.BPF_PROG_TYPE_SOCKET_FILTER, []bpfInsn{insn(unix.BPF_JMP|unix.BPF_EXIT, 0, 0, 0, 0)}, "erspan_test")
	if err == nil {
		unix.Close(fd)
		t.Fatal("the verifier accepted a program that returns R0 unset")
	}
	if !errors.Is(err, unix.EACCES) || !strings.Contains(err.Error(), "(verifier: R0 !read_ok)") {
		t.Errorf("loadProgram: %v; want EACCES and the verifier's reason, R0 !read_ok", err)
	}
}

// TestRaiseMemlock: RaiseMemlock lifts RLIMIT_MEMLOCK, which kernels
// before 5.11 charge the rings to: to unlimited with CAP_SYS_RESOURCE,
// else the soft limit to the hard one. The second runs on a thread
// without the capability (capabilities are per thread, and setrlimit
// checks the caller's), also without root; the first only where the
// test has it.
func TestRaiseMemlock(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim) })
	has := effectiveCap(unix.CAP_SYS_RESOURCE)
	hard := lim.Max
	if has {
		// A hard limit below unlimited tells the two branches apart;
		// only with the capability can the cleanup raise it again.
		hard = 1 << 20
	}
	check := func(want uint64, why string) {
		t.Helper()
		var got unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &got); err != nil {
			t.Fatal(err)
		}
		if got.Cur != want {
			t.Errorf("RLIMIT_MEMLOCK after RaiseMemlock %s: %d, want %d", why, got.Cur, want)
		}
	}
	low := &unix.Rlimit{Cur: 64 << 10, Max: hard}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, low); err != nil {
		t.Fatal(err)
	}
	withoutCaps(t, nil, []uint{unix.CAP_SYS_RESOURCE}, RaiseMemlock)
	check(hard, "without CAP_SYS_RESOURCE (the hard limit)")
	if !has {
		t.Log("no CAP_SYS_RESOURCE here: the unlimited branch not run")
		return
	}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, low); err != nil {
		t.Fatal(err)
	}
	RaiseMemlock()
	check(unix.RLIM_INFINITY, "with CAP_SYS_RESOURCE (unlimited)")
}
