package ifconfig

import (
	"github.com/erspan-linux/erspan/erspan"
	"github.com/erspan-linux/erspan/tunnel"
)

// Status is one interface as `erspanctl -j erspanN` prints it, and as the
// text output is rendered from. Field names are a stable interface for
// scripts: add fields, never rename them.
type Status struct {
	Name    string   `json:"name"`
	Index   int      `json:"index"`
	Flags   uint32   `json:"flags"`      // OpenBSD-style flags word (spec section 2)
	FlagSet []string `json:"flag_names"` // e.g. ["UP","BROADCAST","RUNNING","SIMPLEX","MULTICAST","MONITOR"]
	Up      bool     `json:"up"`
	Monitor bool     `json:"monitor"`
	LLAddr  string   `json:"lladdr"`
	MTU     int      `json:"mtu"`
	// VNetID is the ERSPAN session ID, nil when unset ("vnetid none").
	VNetID *int `json:"vnetid"`
	// Tunnel is nil when no tunnel addresses are set ("tunnel: (unset)").
	Tunnel *TunnelStatus `json:"tunnel"`
	TTL    int           `json:"ttl"`
	DF     bool          `json:"df"`
	TxPrio string        `json:"txprio"` // "packet" or "0".."7"
	RxPrio string        `json:"rxprio"` // "payload"
	// TunnelDomain is the network namespace of the tunnel's sockets,
	// Rdomain the one the interface lives in; "" = the daemon's own.
	TunnelDomain string `json:"tunneldomain"`
	// TunnelDev is the interface sensor mode captures on ("" for none).
	TunnelDev string `json:"tunneldev"`
	Rdomain   string `json:"rdomain"`

	// Spans are the bridges this interface is a span port of.
	Spans    []string   `json:"spans"`
	Counters IfCounters `json:"counters"`
	// Sources are the mirror-loss counters per (switch address, session).
	Sources []SourceStatus `json:"sources"`
	// SourcesOverflow counts packets from sources beyond the tracking
	// limit (1024 per interface).
	SourcesOverflow uint64 `json:"sources_overflow"`
}

// SourceStatus is one switch's mirror session as received: packets and
// what its GRE sequence numbers say was lost upstream.
type SourceStatus struct {
	Source  string `json:"source"`
	Session *int   `json:"session"` // nil for Type I (no session)
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	// NoSequence: the source sends no sequence numbers, or always 0, so
	// loss cannot be told.
	NoSequence bool   `json:"no_sequence"`
	LastSeq    uint32 `json:"last_seq"`
	Gaps       uint64 `json:"gaps"`
	Lost       uint64 `json:"lost"`
	Reordered  uint64 `json:"reordered"`
	Duplicates uint64 `json:"duplicates"`
	Restarts   uint64 `json:"restarts"`
}

// TunnelStatus holds the tunnel addresses. Dst is empty for a collector
// (tunneladdr).
type TunnelStatus struct {
	Family string `json:"family"` // "inet" or "inet6"
	Src    string `json:"src,omitempty"`
	Dst    string `json:"dst,omitempty"`
	Dev    string `json:"dev,omitempty"` // sensor mode: the capture interface
}

// IfCounters are an interface's receive counters (defined by the data path).
type IfCounters = tunnel.IfCounters

// DaemonStatus is the daemon-wide part of `erspanctl -j`.
type DaemonStatus struct {
	// RxPackets counts every GRE packet the receive sockets passed up.
	RxPackets uint64 `json:"rx_packets"`
	// Unmatched counts well-formed ERSPAN packets no interface took
	// (spec section 2, step 4).
	Unmatched uint64 `json:"unmatched"`
	// Drops counts malformed packets by reason: the names of erspan.Error
	// ("truncated", "gre-flags", "gre-version", "not-erspan",
	// "gre-checksum", "ip-header"). Every reason is present, zero or not.
	Drops map[string]uint64 `json:"drops"`
	// KernelDrops counts packets the kernel dropped because a receive
	// socket's buffer or a capture socket's ring was full (SO_RXQ_OVFL,
	// PACKET_STATISTICS).
	KernelDrops uint64 `json:"kernel_drops"`
	// Disallowed counts GRE dropped while net.inet.gre.allow was 0.
	Disallowed uint64 `json:"disallowed"`
	// GREAllow is net.inet.gre.allow.
	GREAllow bool `json:"gre_allow"`
}

// All is what `erspanctl -j` prints with no interface named.
type All struct {
	Interfaces []Status     `json:"interfaces"`
	Daemon     DaemonStatus `json:"daemon"`
}

func daemonStatus(c tunnel.DaemonCounters) DaemonStatus {
	d := DaemonStatus{
		RxPackets:   c.RxPackets,
		Unmatched:   c.Unmatched,
		KernelDrops: c.KernelDrops,
		Disallowed:  c.Disallowed,
		Drops:       make(map[string]uint64, len(c.Drops)),
	}
	for i := erspan.Error(1); i < erspan.NumErrors; i++ {
		d.Drops[i.Name()] = c.Drops[i]
	}
	return d
}
