// Command mkifs makes many collector interfaces at once: erspanI for I in
// -from..-to, each with session I, through one control connection. With
// erspanctl that would be one process start per interface (seconds for a
// thousand); here it is one request per interface on one socket.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/erspan-linux/erspan/ifconfig"
)

func main() {
	socket := flag.String("socket", ifconfig.DefaultSocket, "erspand's control socket")
	from := flag.Int("from", 0, "first unit number (and session)")
	to := flag.Int("to", 1023, "last unit number (and session)")
	src := flag.String("src", "192.0.2.2", "local tunnel address")
	dst := flag.String("dst", "192.0.2.1", "switch address")
	flag.Parse()
	if err := run(*socket, *from, *to, *src, *dst); err != nil {
		fmt.Fprintln(os.Stderr, "mkifs:", err)
		os.Exit(1)
	}
}

func run(socket string, from, to int, src, dst string) error {
	if from < 0 || to > 1023 || from > to {
		return fmt.Errorf("units %d..%d: want 0 <= from <= to <= 1023 (the session range)", from, to)
	}
	c, err := ifconfig.Dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	for i := from; i <= to; i++ {
		name := "erspan" + strconv.Itoa(i)
		if err := c.Create(name); err != nil {
			return err
		}
		s, err := ifconfig.ParseSettings(name, []string{"tunnel", src, dst, "vnetid", strconv.Itoa(i), "up"})
		if err != nil {
			return err
		}
		if err := c.Set(name, s); err != nil {
			return err
		}
	}
	fmt.Printf("created=%d seconds=%.3f\n", to-from+1, time.Since(start).Seconds())
	return nil
}
