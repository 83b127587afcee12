// Command erspand is the daemon behind every erspanN interface of a host:
// it owns their TAPs and tunnel sockets and answers erspanctl on a unix
// socket. It runs in the foreground and logs to stderr.
package main

import (
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/erspan-linux/erspan/ifconfig"
	"github.com/erspan-linux/erspan/tunnel"
)

func main() {
	if err := newApp(run).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "erspand:", err)
		os.Exit(1)
	}
}

// newApp is erspand's command line, its flags and their environment
// variables, running action.
func newApp(action cli.ActionFunc) *cli.App {
	return &cli.App{
		Name:      "erspand",
		Usage:     "serve erspan(4) interfaces: ERSPAN tunnels terminated in userspace into TAP devices",
		UsageText: "erspand [--socket PATH] [--config-dir DIR] [--state PATH] [--rx-moderate DURATION] [--rx-batch N] [--rx-buffer BYTES] [--tx-buffer BYTES] [--rx-ring=false] [--io-uring] [--verbose]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Value: ifconfig.DefaultSocket, EnvVars: []string{"ERSPAN_SOCKET"}, Usage: "control socket `PATH`"},
			&cli.StringFlag{Name: "config-dir", Value: "/etc/erspan", EnvVars: []string{"ERSPAN_CONFIG_DIR"}, Usage: "`DIR` of hostname.erspanN files, applied at start when there is no state to restore"},
			&cli.StringFlag{Name: "state", Usage: "state file `PATH` (default: \"state\" beside the socket)"},
			// The tuning flags have environment variables so that an
			// erspand that erspanctl starts (which passes --socket only)
			// takes them from the environment erspanctl runs in.
			&cli.DurationFlag{Name: "rx-moderate", Value: tunnel.DefaultModerate, EnvVars: []string{"ERSPAN_RX_MODERATE"},
				Usage: "receive interrupt moderation: after a read that emptied a socket, wait `DURATION` (0 to 10ms) so the next read takes a batch; " +
					"less CPU per frame for up to that much (plus the kernel's 50µs timer slack) more latency, as a NIC's rx-usecs; " +
					"a tunneldev's ring hands a partly filled block over after DURATION rounded up to whole milliseconds, at least 1ms"},
			&cli.IntFlag{Name: "rx-batch", Value: tunnel.DefaultBatch, EnvVars: []string{"ERSPAN_RX_BATCH"},
				Usage: fmt.Sprintf("receive up to `N` packets per read (a batch from a GRE socket's eBPF ring or a tunneldev's ring; per recvmmsg with --rx-ring=false), 1 to %d; a socket read with recvmmsg holds N buffers of %d bytes",
					tunnel.MaxBatch, tunnel.DefaultBufSize)},
			&cli.IntFlag{Name: "rx-buffer", Value: tunnel.DefaultRcvBuf, EnvVars: []string{"ERSPAN_RX_BUFFER"},
				Usage: fmt.Sprintf("receive buffer of each receive socket (one per namespace and address family, one per tunneldev) in `BYTES`: "+
					"what may queue while erspand is not scheduled before the kernel drops (kernel_drops); the kernel doubles it, "+
					"and it may exceed net.core.rmem_max; 0: the kernel's default (net.core.rmem_default); "+
					"a tunneldev's receive ring (TPACKET_V3) is this size in kernel memory mapped into erspand, 2 MiB for 0; "+
					"so is a GRE socket's eBPF ring (--rx-ring), rounded up to a power of two, at least 1 MiB and twice --rx-batch records of the largest packets (%d bytes), 2 MiB for 0",
					tunnel.DefaultBufSize)},
			&cli.IntFlag{Name: "tx-buffer", Value: tunnel.DefaultSndBuf, EnvVars: []string{"ERSPAN_TX_BUFFER"},
				Usage: "send buffer of each send socket (one per namespace, address family and tunneldf, shared by those interfaces) in `BYTES`: " +
					"what may wait for the links (qdisc, NIC ring) before sends fail (tx_errors); the kernel doubles it, " +
					"and it may exceed net.core.wmem_max; 0: the kernel's default (net.core.wmem_default)"},
			&cli.BoolFlag{Name: "rx-ring", Value: true, EnvVars: []string{"ERSPAN_RX_RING"},
				Usage: "GRE receive sockets hand packets over in an eBPF ring buffer mapped into erspand (Linux 5.8, CAP_BPF or root), read with no system call per batch; " +
					"false, or where the kernel refuses it (logged): recvmmsg, which costs more CPU per frame (see README, Performance)"},
			&cli.BoolFlag{Name: "io-uring", EnvVars: []string{"ERSPAN_IO_URING"},
				Usage: "write received frames into TAPs in batches on io_uring rather than one write(2) each (no faster on the kernel measured; see README, Performance)"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log more"},
		},
		HideHelpCommand: true,
		Action:          action,
	}
}

// tuning sets the data path's tuning from the flags (or their
// environment variables), each checked against its range.
func tuning(c *cli.Context, sys *tunnel.Linux) error {
	sys.Moderate = c.Duration("rx-moderate")
	if sys.Moderate < 0 || sys.Moderate > 10*time.Millisecond {
		return fmt.Errorf("--rx-moderate %v: want 0 to 10ms", sys.Moderate)
	}
	sys.Batch, sys.RcvBuf, sys.SndBuf = c.Int("rx-batch"), c.Int("rx-buffer"), c.Int("tx-buffer")
	for _, f := range []struct {
		name  string
		check func(int) error
	}{{"rx-batch", tunnel.CheckBatch}, {"rx-buffer", tunnel.CheckSockBuf}, {"tx-buffer", tunnel.CheckSockBuf}} {
		if err := f.check(c.Int(f.name)); err != nil {
			return fmt.Errorf("--%s %d: %w", f.name, c.Int(f.name), err)
		}
	}
	sys.URing = c.Bool("io-uring")
	sys.Ring = c.Bool("rx-ring")
	return nil
}

// procs is the GOMAXPROCS erspand runs with, given the environment's
// GOMAXPROCS (env) and the runtime's choice (cur): at least 2, unless env
// sets it.
func procs(env string, cur int) int {
	if env == "" && cur < 2 {
		return 2
	}
	return cur
}

// checkNoFile warns when the open-file limit would stop erspand before
// a few thousand interfaces: each takes a descriptor (its TAP queue),
// besides about 16 of the daemon's own (receive, guard and send sockets,
// epoll, the monitor program) and a few per sensor NIC (socket, eventfd)
// and per span (its program, a netlink socket). Go raises the soft limit to the
// hard one at start (syscall, Go 1.19+), so the hard limit is what counts
// (systemd: LimitNOFILE).
func checkNoFile(logger *log.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	if lim.Cur < 4096 {
		logger.Printf("open-file limit %d: room for about %d interfaces (one descriptor each); raise it (ulimit -Hn, systemd LimitNOFILE) for more",
			lim.Cur, max(int64(lim.Cur)-16, 0))
	}
}

func run(c *cli.Context) error {
	if c.Args().Len() > 0 {
		return fmt.Errorf("unexpected arguments %q; usage: %s", c.Args().Slice(), c.App.UsageText)
	}
	logger := log.New(os.Stderr, "erspand: ", log.LstdFlags)
	tl := &tunnel.Logger{Errorf: logger.Printf}
	if c.Bool("verbose") {
		tl.Verbosef = logger.Printf
	}
	path := c.String("socket")
	statePath := c.String("state")
	if statePath == "" {
		statePath = filepath.Join(filepath.Dir(path), "state")
	}
	// Before anything else: NewLinux records the daemon's own network
	// namespace while every thread is still in it.
	sys, err := tunnel.NewLinux()
	if err != nil {
		return err
	}
	if err := tuning(c, sys); err != nil {
		return err
	}
	if sys.URing {
		if err := sys.CheckURing(); err != nil {
			logger.Printf("--io-uring: io_uring is not available here (%v); writing frames with write(2)", err)
		}
	}
	// The receive goroutines block in the kernel (ppoll, the moderation
	// sleep) by design. With one P (a daemon pinned to one CPU), each
	// block makes the runtime's sysmon take the P away and wake itself
	// every 20 µs; with a second P idle it leaves a short syscall alone.
	// Measured: 2.2 -> 1.85 µs of CPU per 64-byte frame pinned to one CPU
	// (scripts/bench.sh --sweep, GOMAXPROCS=1 against the default). An
	// explicit GOMAXPROCS in the environment is left as it is.
	cur := runtime.GOMAXPROCS(0)
	if n := procs(os.Getenv("GOMAXPROCS"), cur); n != cur {
		runtime.GOMAXPROCS(n)
	}
	checkNoFile(logger)
	tunnel.RaiseMemlock()
	l, err := ifconfig.Listen(path)
	if err != nil {
		return err
	}
	host := tunnel.NewHost(sys, tl)
	reg := ifconfig.NewRegistry(host)

	// A restarted daemon re-adopts its interfaces from the state file; at
	// boot (/run is empty) the hostname.erspanN files configure them, as
	// OpenBSD's netstart does.
	restored, err := reg.Restore(statePath, host, logger.Printf)
	if err != nil {
		logger.Printf("%v; starting without it", err)
	}
	if restored {
		logger.Printf("restored the interfaces of %s", statePath)
	} else if err := reg.ApplyConfigDir(c.String("config-dir"), logger.Printf); err != nil {
		logger.Printf("config dir: %v", err)
	}
	stop := make(chan struct{})
	persisted := make(chan struct{})
	go func() {
		reg.Persist(statePath, host, stop, logger.Printf)
		close(persisted)
	}()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		logger.Printf("%v: stopping; the erspanN interfaces stay for the next erspand", s)
		l.Close()
	}()
	// With the GOMAXPROCS erspand runs with (procs): scripts/bench.sh
	// reads it here.
	logger.Printf("listening on %s (GOMAXPROCS %d)", path, runtime.GOMAXPROCS(0))
	err = reg.ServeListener(l, logger.Printf)
	close(stop)
	<-persisted
	host.Close()
	os.Remove(path)
	return err
}
