// Command erspand is the daemon behind every erspanN interface of a host:
// it owns their TAPs and tunnel sockets and answers erspanctl on a unix
// socket. It runs in the foreground and logs to stderr.
package main

import (
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/erspan-linux/erspan/ifconfig"
	"github.com/erspan-linux/erspan/tunnel"
)

func main() {
	app := &cli.App{
		Name:      "erspand",
		Usage:     "serve erspan(4) interfaces: ERSPAN tunnels terminated in userspace into TAP devices",
		UsageText: "erspand [--socket PATH] [--verbose]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Value: ifconfig.DefaultSocket, EnvVars: []string{"ERSPAN_SOCKET"}, Usage: "control socket `PATH`"},
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
	l, err := ifconfig.Listen(path)
	if err != nil {
		return err
	}
	sys, err := tunnel.NewLinux()
	if err != nil {
		return err
	}
	host := tunnel.NewHost(sys, tl)
	reg := ifconfig.NewRegistry(host)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		logger.Printf("%v: stopping; erspanN interfaces stay for the next erspand", s)
		l.Close()
	}()
	logger.Printf("listening on %s", path)
	err = reg.ServeListener(l, logger.Printf)
	host.Close()
	os.Remove(path)
	return err
}
