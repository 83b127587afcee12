package test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// bin is where TestMain built erspand and erspanctl.
var bin string

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "erspan-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		build := []string{"build", "-o", dir + "/"}
		if raceEnabled {
			// Under go test -race the daemons get the race detector
			// too: most of the project's concurrency runs in them, not
			// in this binary. Every process the tests start inherits
			// GORACE, directly or through ip netns exec and erspanctl's
			// autostart. log_path=stderr, last so that it wins over a
			// caller's GORACE, puts reports in the daemon's stderr,
			// which the harness captures and checkRace scans.
			// atexit_sleep_ms=0, first so that a caller's GORACE can
			// override it: a race-built process otherwise sleeps 1s
			// before exiting, which made every erspanctl run a second
			// longer and ./test/ take 2m20s instead of 30s.
			build = append(build, "-race")
			os.Setenv("GORACE", "atexit_sleep_ms=0 "+os.Getenv("GORACE")+" log_path=stderr")
		}
		out, err := exec.Command("go", append(build, "../cmd/erspand", "../cmd/erspanctl")...).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building the binaries: %v\n%s", err, out)
			os.Exit(1)
		}
		// A daemon erspanctl autostarts gets only --socket: this keeps
		// it off the host's /etc/erspan/hostname.erspanN files.
		os.Setenv("ERSPAN_CONFIG_DIR", dir+"/no-config")
		bin = dir
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// checkRace fails t when out, the captured stderr or log of the process
// called name, holds a race detector report, quoting the first 40 lines of
// the first one. Without -race (see TestMain) there are none to find.
func checkRace(t *testing.T, name, out string) {
	t.Helper()
	const warning = "WARNING: DATA RACE"
	i := strings.Index(out, warning)
	if i < 0 {
		return
	}
	lines := strings.SplitAfter(out[i:], "\n")
	lines = lines[:min(len(lines), 40)]
	t.Errorf("%s reported %d data race(s); the first:\n%s", name, strings.Count(out, warning), strings.Join(lines, ""))
}
