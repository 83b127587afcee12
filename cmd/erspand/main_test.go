package main

import (
	"log"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/erspan-linux/erspan/tunnel"
)

// tuned is what tuning sets of a tunnel.Linux (which holds a mutex and is
// not copied).
type tuned struct {
	moderate              time.Duration
	batch, rcvBuf, sndBuf int
	uring, ring           bool
}

// TestTuningReachesLinux: every tuning flag, and each one's environment
// variable (what an erspand that erspanctl starts gets), sets its field of
// the data path (the bench's sweep and io_uring rows count on it), and
// without them the defaults hold.
func TestTuningReachesLinux(t *testing.T) {
	parse := func(args ...string) tuned {
		t.Helper()
		l := new(tunnel.Linux)
		app := newApp(func(c *cli.Context) error { return tuning(c, l) })
		if err := app.Run(append([]string{"erspand"}, args...)); err != nil {
			t.Fatalf("erspand %v: %v", args, err)
		}
		return tuned{l.Moderate, l.Batch, l.RcvBuf, l.SndBuf, l.URing, l.Ring}
	}
	defaults := tuned{tunnel.DefaultModerate, tunnel.DefaultBatch, tunnel.DefaultRcvBuf, tunnel.DefaultSndBuf, false, true}
	if got := parse(); got != defaults {
		t.Errorf("no flags: %+v, want the defaults %+v", got, defaults)
	}
	want := tuned{25 * time.Microsecond, 3, 1 << 20, 1 << 21, true, false}
	if got := parse("--rx-moderate", "25us", "--rx-batch", "3", "--rx-buffer", "1048576", "--tx-buffer", "2097152", "--io-uring", "--rx-ring=false"); got != want {
		t.Errorf("flags: %+v, want %+v", got, want)
	}
	t.Setenv("ERSPAN_RX_MODERATE", "25us")
	t.Setenv("ERSPAN_RX_BATCH", "3")
	t.Setenv("ERSPAN_RX_BUFFER", "1048576")
	t.Setenv("ERSPAN_TX_BUFFER", "2097152")
	t.Setenv("ERSPAN_IO_URING", "true")
	t.Setenv("ERSPAN_RX_RING", "false")
	if got := parse(); got != want {
		t.Errorf("environment: %+v, want %+v", got, want)
	}
}

// TestCheckNoFile: erspand warns, with the room left, when the open-file
// limit would stop it before a few thousand interfaces, and not above.
func TestCheckNoFile(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })
	for _, c := range []struct {
		cur  uint64
		want string
	}{
		{1024, "open-file limit 1024: room for about 1008 interfaces"},
		{4096, ""},
	} {
		if c.cur > lim.Max {
			t.Skipf("hard open-file limit %d, below %d", lim.Max, c.cur)
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: c.cur, Max: lim.Max}); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		checkNoFile(log.New(&out, "", 0))
		if got := out.String(); c.want == "" && got != "" || !strings.Contains(got, c.want) {
			t.Errorf("limit %d: logged %q, want %q", c.cur, got, c.want)
		}
	}
}

// TestProcs: erspand raises GOMAXPROCS to 2 on one CPU (or a CPU mask of
// one), and leaves an explicit GOMAXPROCS in the environment as it is.
func TestProcs(t *testing.T) {
	for _, c := range []struct {
		env       string
		cur, want int
	}{{"", 1, 2}, {"", 2, 2}, {"", 8, 8}, {"1", 1, 1}, {"3", 3, 3}} {
		if got := procs(c.env, c.cur); got != c.want {
			t.Errorf("procs(GOMAXPROCS=%q, runtime %d) = %d, want %d", c.env, c.cur, got, c.want)
		}
	}
}
