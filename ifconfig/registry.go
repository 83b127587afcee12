package ifconfig

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"

	"github.com/erspan-linux/erspan/tunnel"
)

// Defaults at create, as OpenBSD's erspan(4) (spec/erspan.md §2).
const (
	DefaultMTU = 1500
	DefaultTTL = 64
	MinMTU     = 46
	MaxMTU     = 65435
	MaxSession = 1023
)

// Backend realises interface configurations: tunnel.Host in the daemon, a
// double in tests.
type Backend interface {
	Create(cfg tunnel.Config) (tunnel.Link, error)
	Update(cfg tunnel.Config) error
	Destroy(name string) error
	Counters(name string) tunnel.IfCounters
	Flows(name string) ([]tunnel.Flow, uint64)
	DaemonCounters() tunnel.DaemonCounters
	// CheckNamespace returns an error wrapping ENOENT when there is no
	// network namespace of that name.
	CheckNamespace(name string) error
	AddSpan(bridge, iface string) error
	DelSpan(bridge, iface string) error
	// CheckDevice returns an error wrapping ENODEV when namespace ns has
	// no interface dev.
	CheckDevice(ns, dev string) error
	SetGREAllow(allow bool)
	GREAllow() bool
}

type entry struct {
	cfg   tunnel.Config
	link  tunnel.Link
	spans []string // bridges this interface is a span port of
}

// Registry holds the settings of every interface and enforces OpenBSD's
// rules on them, one operation per ioctl; each accepted change is handed to
// the Backend before it is recorded, so the two never disagree. Safe for
// concurrent use.
type Registry struct {
	mu  sync.Mutex
	b   Backend
	ifs map[string]*entry
	// dirty receives a token after every accepted change, for the state
	// file (see Persist).
	dirty chan struct{}
}

// NewRegistry returns an empty registry over b.
func NewRegistry(b Backend) *Registry {
	return &Registry{b: b, ifs: make(map[string]*entry), dirty: make(chan struct{}, 1)}
}

func (r *Registry) changed() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// Create makes interface name with erspan(4)'s defaults: down, monitor
// mode, MTU 1500, a random fe:e1:ba:dX:XX:XX address, no tunnel, no session.
func (r *Registry) Create(name string) error {
	return r.create(name, "")
}

// create makes the interface in network namespace rdomain from the start:
// a restarted daemon finds its TAP where a former rdomain setting put it.
func (r *Registry) create(name, rdomain string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.changed()
	defer r.mu.Unlock()
	if _, ok := r.ifs[name]; ok {
		return newError(syscall.EEXIST, name, "create", "the interface exists already")
	}
	cfg := tunnel.Config{
		Name:    name,
		Monitor: true,
		VNetID:  tunnel.NoSession,
		MTU:     DefaultMTU,
		LLAddr:  tunnel.RandomMAC(),
		TTL:     DefaultTTL,
		TxPrio:  tunnel.TxPrioPacket,
		Rdomain: rdomain,
	}
	link, err := r.b.Create(cfg)
	if err != nil {
		e := asError(err, name, "create")
		if e.Errno == syscall.EEXIST && e.Msg == "" {
			e.Msg = "a link of that name exists and erspand did not make it (ip_gre's fallback erspan0, say): remove or rename it, or pick another unit number"
		}
		return e
	}
	// An adopted TAP keeps its own address and MTU.
	cfg.LLAddr, cfg.MTU = link.MAC, link.MTU
	r.ifs[name] = &entry{cfg: cfg, link: link}
	return nil
}

// Destroy removes interface name and its TAP.
func (r *Registry) Destroy(name string) error {
	r.mu.Lock()
	defer r.changed()
	defer r.mu.Unlock()
	if _, err := r.lookup(name, "destroy"); err != nil {
		return err
	}
	// The backend has forgotten the interface even when it reports an
	// error (a TAP it could not remove is left behind, the error says
	// why): so does the registry, or the name would be held here alone.
	err := r.b.Destroy(name)
	delete(r.ifs, name)
	if err != nil {
		return asError(err, name, "destroy")
	}
	return nil
}

func (r *Registry) lookup(name, setting string) (*entry, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	e, ok := r.ifs[name]
	if !ok {
		return nil, newError(syscall.ENXIO, name, setting,
			"no such interface; create it with: erspanctl create %s", name)
	}
	return e, nil
}

// Set applies one setting to interface name, with OpenBSD's checks and
// errnos (spec/erspan.md §2, Settings and their errors).
func (r *Registry) Set(name string, s Setting) error {
	r.mu.Lock()
	defer r.changed()
	defer r.mu.Unlock()
	e, err := r.lookup(name, s.String())
	if err != nil {
		return err
	}
	kw, ok := keywords[s.Name]
	if !ok || len(s.Args) != kw.args {
		// ParseSettings catches this on the command line; the protocol
		// can still carry anything.
		if _, err := ParseSettings(name, append([]string{s.Name}, s.Args...)); err != nil {
			return err
		}
		return newError(syscall.EINVAL, name, s.String(), "malformed setting")
	}
	// A value wrong whatever the state (README, Usage) is refused
	// (EINVAL) before any state is looked at, as erspanctl refuses the
	// line before sending it. A deliberate difference from OpenBSD, whose
	// erspan_ioctl answers EBUSY on a running interface before it checks
	// a session's range or an address's kind (ifconfig(8) itself only
	// refuses what it cannot parse): here the answer names what is wrong
	// with the value, which stays wrong once the interface is down.
	v, err := parseValue(name, s)
	if err != nil {
		return err
	}
	cfg := e.cfg
	if kw.down && cfg.Up {
		return newError(syscall.EBUSY, name, s.String(),
			"%s is up; take it down first (erspanctl %s down), change it, then bring it up", name, name)
	}
	switch s.Name {
	case "tunnel", "tunneladdr":
		cfg.Src, cfg.Dst = v.src, v.dst
	case "-tunnel":
		cfg.Src, cfg.Dst = netip.Addr{}, netip.Addr{}
	case "vnetid":
		cfg.VNetID = v.n
	case "-vnetid":
		cfg.VNetID = tunnel.NoSession
	case "up":
		if cfg.Up {
			return nil
		}
		if err := r.checkUp(name, s, &cfg); err != nil {
			return err
		}
		cfg.Up = true
	case "down":
		cfg.Up = false
	case "monitor":
		cfg.Monitor = true
	case "-monitor":
		cfg.Monitor = false
	case "tunnelttl":
		cfg.TTL = v.n
	case "tunneldf":
		cfg.DF = true
	case "-tunneldf":
		cfg.DF = false
	case "txprio":
		cfg.TxPrio = v.n
	case "mtu":
		cfg.MTU = v.n
	case "lladdr":
		cfg.LLAddr = v.mac
	case "tunneldomain", "-tunneldomain":
		if cfg.TunnelDomain, err = r.namespace(name, s, v.name); err != nil {
			return err
		}
	case "tunneldev":
		if err := r.b.CheckDevice(cfg.TunnelDomain, v.name); err != nil {
			e := asError(err, name, s.String())
			e.Iface, e.Msg = name, fmt.Sprintf("no interface %s in the tunnel's network namespace (see ip link)", v.name)
			return e
		}
		cfg.TunnelDev = v.name
	case "-tunneldev":
		cfg.TunnelDev = ""
	case "rdomain", "-rdomain":
		if len(e.spans) > 0 {
			return newError(syscall.EBUSY, name, s.String(),
				"%s is a span port of %s, which stays in this namespace; remove it first: erspanctl %s delspan %s",
				name, e.spans[0], e.spans[0], name)
		}
		if cfg.Rdomain, err = r.namespace(name, s, v.name); err != nil {
			return err
		}
	}
	if err := r.b.Update(cfg); err != nil {
		return asError(err, name, s.String())
	}
	e.cfg = cfg
	return nil
}

// namespace checks that ns, a routing domain's network namespace
// (parseValue's), exists; "" is the daemon's own.
func (r *Registry) namespace(name string, s Setting, ns string) (string, error) {
	if ns == "" {
		return "", nil
	}
	if err := r.b.CheckNamespace(ns); err != nil {
		e := asError(err, name, s.String())
		e.Msg = fmt.Sprintf("no network namespace %q (see ip netns list; create it with ip netns add %s)", ns, ns)
		return "", e
	}
	return ns, nil
}

// CheckSysctl refuses a sysctl erspand does not have (ENOENT) or a value
// it cannot take (EINVAL); value "" reads.
func CheckSysctl(name, value string) error {
	if name != "net.inet.gre.allow" {
		return newError(syscall.ENOENT, "", name, "unknown sysctl; the one there is: net.inet.gre.allow")
	}
	if value != "" && value != "0" && value != "1" {
		return newError(syscall.EINVAL, "", name+"="+value, "net.inet.gre.allow is 0 or 1")
	}
	return nil
}

// CheckSpan refuses, before any daemon is asked, a span port request
// (op addspan or delspan) whose bridge or interface name cannot be one
// (EINVAL).
func CheckSpan(bridge, op, iface string) error {
	if err := checkIfName(bridge, bridge, op+" "+iface); err != nil {
		return err
	}
	return CheckName(iface)
}

// Sysctl reads, or with value set writes, a daemon-wide setting. The one
// there is is OpenBSD's net.inet.gre.allow (1: GRE is accepted; 0: every
// GRE packet is dropped and counted). erspand defaults to 1, unlike
// OpenBSD: starting the daemon is the opt-in.
func (r *Registry) Sysctl(name, value string) (string, error) {
	if err := CheckSysctl(name, value); err != nil {
		return "", err
	}
	if value != "" {
		r.b.SetGREAllow(value == "1")
		r.changed()
	}
	return boolStr(r.b.GREAllow()), nil
}

// AddSpan makes interface name a span port of bridge (OpenBSD's
// `ifconfig bridge0 addspan erspan0`): every frame crossing the bridge is
// also sent out of the interface.
func (r *Registry) AddSpan(bridge, name string) error {
	r.mu.Lock()
	defer r.changed()
	defer r.mu.Unlock()
	setting := "addspan " + name
	// The names before the state, as erspanctl checks them (CheckSpan).
	if err := CheckSpan(bridge, "addspan", name); err != nil {
		return err
	}
	e, err := r.lookup(name, setting)
	if err != nil {
		return err
	}
	if slices.Contains(e.spans, bridge) {
		return nil
	}
	if err := r.b.AddSpan(bridge, name); err != nil {
		e := asError(err, bridge, setting)
		if e.Msg == "" {
			e.Msg = fmt.Sprintf("%s must be a Linux bridge in the namespace of %s", bridge, name)
		}
		return e
	}
	e.spans = append(e.spans, bridge)
	return nil
}

// DelSpan removes the span port; ENOENT when it is not one.
func (r *Registry) DelSpan(bridge, name string) error {
	r.mu.Lock()
	defer r.changed()
	defer r.mu.Unlock()
	setting := "delspan " + name
	if err := CheckSpan(bridge, "delspan", name); err != nil {
		return err
	}
	e, err := r.lookup(name, setting)
	if err != nil {
		return err
	}
	i := slices.Index(e.spans, bridge)
	if i < 0 {
		return newError(syscall.ENOENT, bridge, setting, "%s is not a span port of %s", name, bridge)
	}
	if err := r.b.DelSpan(bridge, name); err != nil {
		return asError(err, bridge, setting)
	}
	e.spans = slices.Delete(e.spans, i, i+1)
	return nil
}

// checkUp applies erspan_up's rules: EDESTADDRREQ without a local address,
// or with a destination but no session; EADDRINUSE when another up
// interface has the same (local, remote, session) key.
func (r *Registry) checkUp(name string, s Setting, cfg *tunnel.Config) error {
	// Sensor mode takes packets off an interface: addresses only filter.
	if !cfg.Src.IsValid() && cfg.TunnelDev == "" {
		return newError(syscall.EDESTADDRREQ, name, s.String(),
			"no tunnel addresses: set them first with tunnel SRC DST (one switch) or tunneladdr SRC (a collector for any switch), or tunneldev IFNAME (sensor mode)")
	}
	if cfg.Dst.IsValid() && cfg.VNetID == tunnel.NoSession {
		return newError(syscall.EDESTADDRREQ, name, s.String(),
			"a tunnel with a destination needs a session: set vnetid 0..%d, or use tunneladdr SRC to collect every session", MaxSession)
	}
	for other, o := range r.ifs {
		if other == name || !o.cfg.Up {
			continue
		}
		if o.cfg.Src == cfg.Src && o.cfg.Dst == cfg.Dst && o.cfg.VNetID == cfg.VNetID &&
			o.cfg.TunnelDomain == cfg.TunnelDomain && o.cfg.TunnelDev == cfg.TunnelDev {
			return newError(syscall.EADDRINUSE, name, s.String(),
				"%s is up with the same tunnel addresses and vnetid; take it down or change the tunnel or vnetid of one of them", other)
		}
	}
	return nil
}

// Status returns one interface as erspanctl shows it.
func (r *Registry) Status(name string) (Status, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.lookup(name, "")
	if err != nil {
		return Status{}, err
	}
	return r.status(e), nil
}

// All returns every interface, sorted by unit number, and the daemon's
// counters.
func (r *Registry) All() All {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := All{Interfaces: make([]Status, 0, len(r.ifs))}
	for _, e := range r.ifs {
		a.Interfaces = append(a.Interfaces, r.status(e))
	}
	sort.Slice(a.Interfaces, func(i, j int) bool {
		return unitLess(a.Interfaces[i].Name, a.Interfaces[j].Name)
	})
	a.Daemon = daemonStatus(r.b.DaemonCounters())
	a.Daemon.GREAllow = r.b.GREAllow()
	return a
}

func unitLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

func (r *Registry) status(e *entry) Status {
	c := &e.cfg
	s := Status{
		Name:         c.Name,
		Index:        e.link.Index,
		Up:           c.Up,
		Monitor:      c.Monitor,
		LLAddr:       net.HardwareAddr(c.LLAddr).String(),
		MTU:          c.MTU,
		TTL:          c.TTL,
		DF:           c.DF,
		TxPrio:       "packet",
		RxPrio:       "payload",
		TunnelDomain: c.TunnelDomain,
		TunnelDev:    c.TunnelDev,
		Rdomain:      c.Rdomain,
		Counters:     r.b.Counters(c.Name),
		Spans:        slices.Clone(e.spans),
	}
	flows, overflow := r.b.Flows(c.Name)
	s.SourcesOverflow = overflow
	for _, f := range flows {
		src := SourceStatus{
			Source: f.Source.String(), Packets: f.Packets, Bytes: f.Bytes, NoSequence: f.NoSequence,
			LastSeq: f.LastSeq, Gaps: f.Gaps, Lost: f.Lost, Reordered: f.Reordered,
			Duplicates: f.Duplicates, Restarts: f.Restarts,
		}
		if f.Session != tunnel.NoSession {
			n := f.Session
			src.Session = &n
		}
		s.Sources = append(s.Sources, src)
	}
	if c.TxPrio != tunnel.TxPrioPacket {
		s.TxPrio = strconv.Itoa(c.TxPrio)
	}
	s.Flags, s.FlagSet = flags(c.Up, c.Monitor)
	if c.VNetID != tunnel.NoSession {
		v := c.VNetID
		s.VNetID = &v
	}
	if c.Src.IsValid() || c.TunnelDev != "" {
		t := &TunnelStatus{Family: "inet", Src: addrString(c.Src), Dev: c.TunnelDev}
		if c.Src.Is6() {
			t.Family = "inet6"
		}
		if c.Dst.IsValid() {
			t.Dst = c.Dst.String()
		}
		s.Tunnel = t
	}
	return s
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// OpenBSD interface flags, as ifconfig prints them: if_flags in the low 16
// bits, if_xflags shifted left by 16 (spec/erspan.md §2, ifconfig output).
const (
	iffUp        = 0x1
	iffBroadcast = 0x2
	iffRunning   = 0x40
	iffSimplex   = 0x800
	iffMulticast = 0x8000
	ifxfCloned   = 0x2 << 16 // not named in ifconfig's output
	ifxfMonitor  = 0x100 << 16
)

func flags(up, monitor bool) (uint32, []string) {
	var f uint32 = iffBroadcast | iffSimplex | iffMulticast | ifxfCloned
	if up {
		f |= iffUp | iffRunning
	}
	if monitor {
		f |= ifxfMonitor
	}
	var names []string
	for _, b := range []struct {
		bit  uint32
		name string
	}{
		{iffUp, "UP"}, {iffBroadcast, "BROADCAST"}, {iffRunning, "RUNNING"},
		{iffSimplex, "SIMPLEX"}, {iffMulticast, "MULTICAST"}, {ifxfMonitor, "MONITOR"},
	} {
		if f&b.bit != 0 {
			names = append(names, b.name)
		}
	}
	return f, names
}
