package tunnel

import (
	"net/netip"
	"sync/atomic"
)

// NoSession is Config.VNetID when no session ID is set ("vnetid none").
const NoSession = -1

// demuxKey identifies a session-only tunnel (a collector's): local address
// (outer destination) and session ID. OpenBSD's erspan tree keys every
// tunnel so, with the remote address (outer source) too, invalid for a
// collector; demuxTable keeps the exact tunnels, which have one, by
// address pair (addrPair). The routing domain is the network namespace
// the receiving socket lives in, so it is implied by the table the key is
// looked up in.
type demuxKey struct {
	local   netip.Addr
	session int32
}

// route is what a lookup yields: the interface, and what it may do with the
// frame. An immutable copy of the settings the data path needs is kept here
// so that a packet never reads mutable configuration.
type route struct {
	ifc *iface
	// captureOnly marks session-only and catch-all matches: OpenBSD only
	// hands those to bpf (spec/erspan.md §2 Receive, steps 2 and 3).
	captureOnly bool
	monitor     bool
	// flow is a cache, not a setting: the flow of the first run this
	// route took (flowFor).
	flow atomic.Pointer[flow]
}

// flowFor returns the interface's flow k (nil beyond maxFlows), from the
// route's cache when it is the flow of the route's first run. An exact
// route's runs are always of that one flow, so when frames of many
// sessions interleave (a run per packet) no flow table lookup is made, a
// map whose memory is cold by then. Only the first run stores: a
// collector's route, whose sources and sessions may interleave, would
// otherwise write the cache (an atomic exchange, on a line the receivers
// of both families read) per packet, for no hit.
func (r *route) flowFor(k flowKey) *flow {
	c := r.flow.Load()
	if c != nil && c.key == k {
		return c
	}
	f := r.ifc.flows.get(k)
	if c == nil && f != nil {
		r.flow.Store(f)
	}
	return f
}

// addrPair is a packet's outer addresses: local (destination) and remote
// (source).
type addrPair struct{ local, remote netip.Addr }

// sessionRoutes are the exact tunnels of one address pair, by session.
type sessionRoutes map[int32]*route

// demuxTable is immutable once built; the host swaps in a new one when
// settings change, so the receive path reads it without a lock.
type demuxTable struct {
	// exact is by address pair, then session: the receiver looks the
	// pair up once for a batch's packets from one switch, and per packet
	// only the session, a 4-byte key (one interface per session of a
	// switch, their packets interleaved, is the case that counts).
	exact    map[addrPair]sessionRoutes
	session  map[demuxKey]*route // local, session; remote invalid
	catchAll map[netip.Addr]*route
	families [2]bool // [0] IPv4 needed, [1] IPv6 needed
	// wildcard: some interface has no local address (sensor mode), so a
	// lookup also tries the invalid address, which stands for any.
	wildcard bool
}

// buildTable makes the table for the interfaces that are up and whose
// tunnel lives in network namespace ns (OpenBSD's tunneldomain) and, for a
// capture socket, on interface dev (sensor mode; "" for the raw sockets).
// With dev, the local address may be unset: it then matches any (the
// wildcard entries). The caller (ifconfig) has already refused duplicate
// keys with EADDRINUSE; if one slips through, the first interface wins.
func buildTable(ifs []*iface, ns, dev string) *demuxTable {
	t := &demuxTable{
		exact:    make(map[addrPair]sessionRoutes),
		session:  make(map[demuxKey]*route),
		catchAll: make(map[netip.Addr]*route),
	}
	for _, ifc := range ifs {
		c := &ifc.cfg
		if !c.Up || c.TunnelDomain != ns || c.TunnelDev != dev || (!c.Src.IsValid() && dev == "") {
			continue
		}
		if !c.Src.IsValid() {
			t.wildcard = true
		}
		r := &route{ifc: ifc, monitor: c.Monitor}
		session := int32(c.VNetID)
		switch {
		case c.Dst.IsValid():
			// ifconfig refuses up with a destination and no session
			// (EDESTADDRREQ), as OpenBSD does.
			if c.VNetID == NoSession {
				continue
			}
			pair := addrPair{c.Src, c.Dst}
			if t.exact[pair] == nil {
				t.exact[pair] = make(sessionRoutes)
			}
			putFirst(t.exact[pair], session, r)
		case c.VNetID != NoSession:
			r.captureOnly = true
			putFirst(t.session, demuxKey{local: c.Src, session: session}, r)
		default:
			r.captureOnly = true
			putFirst(t.catchAll, c.Src, r)
		}
		if c.Src.Is4() {
			t.families[0] = true
		} else if c.Src.Is6() {
			t.families[1] = true
		}
	}
	return t
}

// putFirst puts r at k unless k has a route already: the first interface
// wins.
func putFirst[K comparable](m map[K]*route, k K, r *route) {
	if _, dup := m[k]; !dup {
		m[k] = r
	}
}

// lookup finds the interface for a packet to local carrying session
// (NoSession for Type I), given exact, the exact tunnels of the packet's
// address pair (t.exact's entry for it, nil for none), in OpenBSD's order
// (spec/erspan.md §2 Receive): exact tunnel, then an interface with the
// session and no destination, then a catch-all with neither. Type I
// carries no session, so only a catch-all can take it. It returns nil when
// nothing matches. The pair is the caller's to look up, as the receiver
// does once for the packets of one switch in a row.
func (t *demuxTable) lookup(exact sessionRoutes, local netip.Addr, session int32) *route {
	if session != NoSession {
		if r := exact[session]; r != nil {
			return r
		}
		if r := t.session[demuxKey{local: local, session: session}]; r != nil {
			return r
		}
		if t.wildcard {
			if r := t.session[demuxKey{session: session}]; r != nil {
				return r
			}
		}
	}
	if r := t.catchAll[local]; r != nil || !t.wildcard {
		return r
	}
	return t.catchAll[netip.Addr{}]
}
