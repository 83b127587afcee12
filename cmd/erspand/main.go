// Command erspand is the daemon behind every erspanN interface of a host:
// it owns their TAPs and tunnel sockets and answers erspanctl on a unix
// socket. It runs in the foreground and logs to stderr.
package main

import (
	"fmt"
	"log"
	"math"
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
	app := &cli.App{
		Name:      "erspand",
		Usage:     "serve erspan(4) interfaces: ERSPAN tunnels terminated in userspace into TAP devices",
		UsageText: "erspand [--socket PATH] [--config-dir DIR] [--state PATH] [--rx-moderate DURATION] [--rx-batch N] [--rx-buffer BYTES] [--tx-buffer BYTES] [--io-uring] [--verbose]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Value: ifconfig.DefaultSocket, EnvVars: []string{"ERSPAN_SOCKET"}, Usage: "control socket `PATH`"},
			&cli.StringFlag{Name: "config-dir", Value: "/etc/erspan", EnvVars: []string{"ERSPAN_CONFIG_DIR"}, Usage: "`DIR` of hostname.erspanN files, applied at start when there is no state to restore"},
			&cli.StringFlag{Name: "state", Usage: "state file `PATH` (default: \"state\" beside the socket)"},
			// The tuning flags have environment variables so that an
			// erspand that erspanctl starts (which passes --socket only)
			// takes them from the environment erspanctl runs in.
			&cli.DurationFlag{Name: "rx-moderate", Value: tunnel.DefaultModerate, EnvVars: []string{"ERSPAN_RX_MODERATE"},
				Usage: "receive interrupt moderation: after a read that emptied a socket, wait `DURATION` (0 to 10ms) so the next read takes a batch; " +
					"less CPU per frame for up to that much (plus the kernel's 50µs timer slack) more latency, as a NIC's rx-usecs"},
			&cli.IntFlag{Name: "rx-batch", Value: tunnel.DefaultBatch, EnvVars: []string{"ERSPAN_RX_BATCH"},
				Usage: fmt.Sprintf("receive up to `N` packets per system call (recvmmsg), 1 to %d; each receive socket holds N buffers of %d bytes",
					tunnel.MaxBatch, tunnel.DefaultBufSize)},
			&cli.IntFlag{Name: "rx-buffer", Value: tunnel.DefaultRcvBuf, EnvVars: []string{"ERSPAN_RX_BUFFER"},
				Usage: "receive buffer of each receive socket (one per namespace and address family, one per tunneldev) in `BYTES`: " +
					"what may queue while erspand is not scheduled before the kernel drops (kernel_drops); the kernel doubles it, " +
					"and it may exceed net.core.rmem_max; 0: the kernel's default (net.core.rmem_default)"},
			&cli.IntFlag{Name: "tx-buffer", Value: tunnel.DefaultSndBuf, EnvVars: []string{"ERSPAN_TX_BUFFER"},
				Usage: "send buffer of each send socket (one per namespace, address family and tunneldf, shared by those interfaces) in `BYTES`: " +
					"what may wait for the links (qdisc, NIC ring) before sends fail (tx_errors); the kernel doubles it, " +
					"and it may exceed net.core.wmem_max; 0: the kernel's default (net.core.wmem_default)"},
			&cli.BoolFlag{Name: "io-uring", EnvVars: []string{"ERSPAN_IO_URING"},
				Usage: "write received frames into TAPs in batches on io_uring rather than one write(2) each (no faster on the kernel measured; see README, Performance)"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log more"},
		},
		HideHelpCommand: true,
		Action:          run,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "erspand:", err)
		os.Exit(1)
	}
}

// maxSockBuf is the largest socket buffer erspand asks for: the kernel
// doubles the value (for its bookkeeping) in an int, which kernels before
// 5.3 did without clamping it, so that a larger one overflowed into a
// minimal or negative buffer.
const maxSockBuf = math.MaxInt32 / 2

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
	sys.Moderate = c.Duration("rx-moderate")
	if sys.Moderate < 0 || sys.Moderate > 10*time.Millisecond {
		return fmt.Errorf("--rx-moderate %v: want 0 to 10ms", sys.Moderate)
	}
	sys.Batch, sys.RcvBuf, sys.SndBuf = c.Int("rx-batch"), c.Int("rx-buffer"), c.Int("tx-buffer")
	if sys.Batch < 1 || sys.Batch > tunnel.MaxBatch {
		return fmt.Errorf("--rx-batch %d: want 1 to %d", sys.Batch, tunnel.MaxBatch)
	}
	for _, f := range []string{"rx-buffer", "tx-buffer"} {
		// The kernel doubles the size asked and keeps it an int.
		if n := c.Int(f); n < 0 || n > maxSockBuf {
			return fmt.Errorf("--%s %d: want 0 (the kernel's default) to %d bytes", f, n, maxSockBuf)
		}
	}
	sys.URing = c.Bool("io-uring")
	if sys.URing {
		w := sys.NewFrameWriter(1)
		if u, ok := w.(interface{ URing() bool }); !ok || !u.URing() {
			logger.Printf("--io-uring: io_uring is not available here (kernel before 5.6, kernel.io_uring_disabled, or a seccomp profile); writing frames with write(2)")
		}
		w.Close()
	}
	// The receive goroutines block in the kernel (ppoll, the moderation
	// sleep) by design. With one P (a daemon pinned to one CPU), each
	// block makes the runtime's sysmon take the P away and wake itself
	// every 20 µs; with a second P idle it leaves a short syscall alone.
	// Measured: 2.2 -> 1.85 µs of CPU per 64-byte frame pinned to one CPU.
	if runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
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
	logger.Printf("listening on %s", path)
	err = reg.ServeListener(l, logger.Printf)
	close(stop)
	<-persisted
	host.Close()
	os.Remove(path)
	return err
}
