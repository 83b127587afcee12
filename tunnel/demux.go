package tunnel

import (
	"net/netip"
)

// NoSession is Config.VNetID when no session ID is set ("vnetid none").
const NoSession = -1

// demuxKey identifies a tunnel as OpenBSD's erspan tree does: local address
// (outer destination), remote address (outer source, invalid for a
// collector) and session ID (NoSession for none). The routing domain is the
// network namespace the receiving socket lives in, so it is implied by the
// table the key is looked up in.
type demuxKey struct {
	local, remote netip.Addr
	session       int32
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
}

// demuxTable is immutable once built; the host swaps in a new one when
// settings change, so the receive path reads it without a lock.
type demuxTable struct {
	exact    map[demuxKey]*route // local, remote, session
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
		exact:    make(map[demuxKey]*route),
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
		k := demuxKey{local: c.Src, remote: c.Dst, session: int32(c.VNetID)}
		switch {
		case c.Dst.IsValid():
			// ifconfig refuses up with a destination and no session
			// (EDESTADDRREQ), as OpenBSD does.
			if c.VNetID == NoSession {
				continue
			}
			putRoute(t.exact, k, r)
		case c.VNetID != NoSession:
			r.captureOnly = true
			putRoute(t.session, k, r)
		default:
			r.captureOnly = true
			if _, dup := t.catchAll[c.Src]; !dup {
				t.catchAll[c.Src] = r
			}
		}
		if c.Src.Is4() {
			t.families[0] = true
		} else if c.Src.Is6() {
			t.families[1] = true
		}
	}
	return t
}

func putRoute(m map[demuxKey]*route, k demuxKey, r *route) {
	if _, dup := m[k]; !dup {
		m[k] = r
	}
}

// lookup finds the interface for a packet from remote to local carrying
// session (NoSession for Type I), in OpenBSD's order (spec/erspan.md §2
// Receive): exact tunnel, then an interface with the session and no
// destination, then a catch-all with neither. Type I carries no session, so
// only a catch-all can take it. It returns nil when nothing matches.
func (t *demuxTable) lookup(local, remote netip.Addr, session int32) *route {
	if session != NoSession {
		if r := t.exact[demuxKey{local: local, remote: remote, session: session}]; r != nil {
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
