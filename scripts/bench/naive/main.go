// Command naive is the baseline erspand is measured against: the design
// anyone would write first. A water TAP, net.ListenIP("ip4:gre"), and per
// packet one ReadFrom, a decode and one Write. It takes ERSPAN packets for
// one session from anyone and runs until -duration or a signal.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/songgao/water"

	"github.com/erspan-linux/erspan/erspan"
	"github.com/erspan-linux/erspan/tunnel"
)

func main() {
	name := flag.String("name", "naive0", "TAP to create")
	local := flag.String("local", "192.0.2.2", "local address to receive GRE on")
	session := flag.Int("session", 77, "ERSPAN session to take")
	dur := flag.Duration("duration", 5*time.Minute, "exit after this long at the latest")
	flag.Parse()
	if err := run(*name, *local, uint16(*session), *dur); err != nil {
		fmt.Fprintln(os.Stderr, "naive:", err)
		os.Exit(1)
	}
}

func run(name, local string, session uint16, dur time.Duration) error {
	tap, err := water.New(water.Config{DeviceType: water.TAP, PlatformSpecificParams: water.PlatformSpecificParams{Name: name}})
	if err != nil {
		return err
	}
	defer tap.Close()
	// Measured in the same monitor conditions as erspanN and the ceiling.
	if err := tunnel.SetLinkUp(name, true); err != nil {
		return err
	}
	if err := tunnel.SetMonitor(name, true); err != nil {
		return err
	}
	c, err := net.ListenIP("ip4:gre", &net.IPAddr{IP: net.ParseIP(local)})
	if err != nil {
		return err
	}
	// Unblock ReadFrom on a signal or at the deadline.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		select {
		case <-sig:
		case <-time.After(dur):
		}
		c.Close()
	}()
	fmt.Println("ready")

	buf := make([]byte, 65536)
	var p erspan.Packet
	var in, out int64
	for {
		n, _, err := c.ReadFrom(buf) // the IPv4 header is stripped
		if err != nil {
			break
		}
		in++
		if erspan.Decode(buf[:n], &p) != nil || p.Session != session || p.Type == erspan.TypeI {
			continue
		}
		if _, err := tap.Write(p.Frame); err == nil {
			out++
		}
	}
	fmt.Printf("received=%d written=%d\n", in, out)
	return nil
}
