// Command dropin makes a link drop everything it receives at tc ingress,
// with the same eBPF filter as erspanN's monitor mode. The benchmark puts
// it on the collector's veth while it counts encapsulated packets there:
// the veth still counts them, and nothing after tc ingress (IP input, ICMP
// protocol-unreachable for GRE nobody takes) adds work to the run. This
// kernel has neither tc matchall nor gact, so `tc` alone cannot do it.
package main

import (
	"fmt"
	"os"

	"github.com/erspan-linux/erspan/tunnel"
)

func main() {
	if len(os.Args) != 3 || (os.Args[2] != "on" && os.Args[2] != "off") {
		fmt.Fprintln(os.Stderr, "usage: dropin IFNAME on|off")
		os.Exit(2)
	}
	if err := tunnel.SetMonitor(os.Args[1], os.Args[2] == "on"); err != nil {
		fmt.Fprintln(os.Stderr, "dropin:", err)
		os.Exit(1)
	}
}
