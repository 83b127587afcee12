package ifconfig

import (
	"fmt"
	"io"
	"strings"

	"github.com/erspan-linux/erspan/erspan"
)

// WriteStatus prints one interface in OpenBSD's ifconfig layout
// (spec/erspan.md §2, ifconfig output), followed by its counters.
func WriteStatus(w io.Writer, s *Status) {
	fmt.Fprintf(w, "%s: flags=%x<%s> mtu %d\n", s.Name, s.Flags, strings.Join(s.FlagSet, ","), s.MTU)
	fmt.Fprintf(w, "\tlladdr %s\n", s.LLAddr)
	fmt.Fprintf(w, "\tindex %d priority 0 llprio 3\n", s.Index)
	if s.Rdomain != "" {
		// OpenBSD prints the interface's routing domain; ours is the
		// network namespace it was moved to.
		fmt.Fprintf(w, "\trdomain %s\n", s.Rdomain)
	}
	vnetid := "none"
	if s.VNetID != nil {
		vnetid = fmt.Sprint(*s.VNetID)
	}
	fmt.Fprintf(w, "\tencap: vnetid %s txprio %s rxprio %s\n", vnetid, s.TxPrio, s.RxPrio)
	fmt.Fprintf(w, "\tgroups: erspan\n")
	if t := s.Tunnel; t != nil {
		fmt.Fprintf(w, "\ttunnel:")
		if t.Dev != "" {
			// Sensor mode: the addresses, if any, only filter.
			fmt.Fprintf(w, " dev %s", t.Dev)
		}
		if t.Src != "" {
			fmt.Fprintf(w, " %s %s", t.Family, t.Src)
		}
		if t.Dst != "" {
			fmt.Fprintf(w, " --> %s", t.Dst)
		}
		df := "nodf"
		if s.DF {
			df = "df"
		}
		fmt.Fprintf(w, " ttl %d %s", s.TTL, df)
		if s.TunnelDomain != "" {
			fmt.Fprintf(w, " rdomain %s", s.TunnelDomain)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintf(w, "\ttunnel: (unset)\n")
	}
	for _, b := range s.Spans {
		fmt.Fprintf(w, "\tspan: %s\n", b)
	}
	c := &s.Counters
	fmt.Fprintf(w, "\tinput: %d packets, %d bytes (type I %d, II %d, III %d)\n",
		c.RxPackets, c.RxBytes, c.TypeI, c.TypeII, c.TypeIII)
	fmt.Fprintf(w, "\tinput truncated (T bit): %d\n", c.RxTruncated)
	fmt.Fprintf(w, "\tinput drops: %d capture-only without monitor, %d not Ethernet, %d short frames, %d TAP errors\n",
		c.RxCaptureOnly, c.RxFrameType, c.RxInnerShort, c.RxErrors)
	fmt.Fprintf(w, "\toutput: %d packets, %d bytes\n", c.TxPackets, c.TxBytes)
	fmt.Fprintf(w, "\toutput drops: %d without tunnel or session, %d too big for df, %d send errors\n",
		c.TxNoTunnel, c.TxTooBig, c.TxErrors)
	for _, src := range s.Sources {
		sess := "none"
		if src.Session != nil {
			sess = fmt.Sprint(*src.Session)
		}
		fmt.Fprintf(w, "\tsource %s session %s: %d packets, %d bytes, ", src.Source, sess, src.Packets, src.Bytes)
		if src.NoSequence {
			fmt.Fprintf(w, "no sequence\n")
			continue
		}
		fmt.Fprintf(w, "seq %d, %d lost in %d gaps, %d reordered, %d duplicates", src.LastSeq, src.Lost, src.Gaps, src.Reordered, src.Duplicates)
		if src.Restarts > 0 {
			fmt.Fprintf(w, ", %d restarts", src.Restarts)
		}
		fmt.Fprintln(w)
	}
	if s.SourcesOverflow > 0 {
		fmt.Fprintf(w, "\tsources beyond the tracking limit: %d packets\n", s.SourcesOverflow)
	}
}

// WriteDaemon prints the daemon-wide counters.
func WriteDaemon(w io.Writer, d *DaemonStatus) {
	fmt.Fprintf(w, "erspand: %d GRE packets received, %d matched no interface, %d dropped by the kernel (socket buffer or ring full)\n",
		d.RxPackets, d.Unmatched, d.KernelDrops)
	fmt.Fprintf(w, "\tnet.inet.gre.allow=%s, %d dropped while 0\n", boolStr(d.GREAllow), d.Disallowed)
	var parts []string
	for e := erspan.Error(1); e < erspan.NumErrors; e++ {
		parts = append(parts, fmt.Sprintf("%s %d", e.Name(), d.Drops[e.Name()]))
	}
	fmt.Fprintf(w, "\tmalformed: %s\n", strings.Join(parts, ", "))
}

// WriteAll prints every interface, then the daemon's counters.
func WriteAll(w io.Writer, a *All) {
	for i := range a.Interfaces {
		WriteStatus(w, &a.Interfaces[i])
	}
	WriteDaemon(w, &a.Daemon)
}
