// Package tunnel is the data path of erspand: TAP devices, receive sockets,
// the demultiplexer and its counters. Packets flow one way, socket ->
// erspan.Decode -> demux -> TAP; the control plane (package ifconfig) hands
// in whole interface configurations and never touches a packet.
package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Config is the whole desired state of one interface. Package ifconfig
// validates it (OpenBSD's rules and errnos); the Host only realises it.
type Config struct {
	Name    string
	Up      bool
	Monitor bool
	// Src is the local tunnel address (outer destination of received
	// packets); invalid when unset.
	Src netip.Addr
	// Dst is the remote address (the switch); invalid for a collector
	// (tunneladdr) or when unset.
	Dst netip.Addr
	// VNetID is the ERSPAN session ID 0..1023, or NoSession.
	VNetID int
	MTU    int
	LLAddr net.HardwareAddr
	// TTL is the outer TTL / hop limit of transmitted packets, 1..255.
	TTL int
	// DF sets the outer don't-fragment bit: oversize packets are dropped
	// instead of fragmented (IPv6: not fragmented at the source).
	DF bool
	// TxPrio is the priority 0..7 whose value << 5 becomes the outer TOS /
	// traffic class, or TxPrioPacket for the frame's own priority.
	TxPrio int
	// TunnelDomain is the network namespace the tunnel's sockets live in
	// ("" = the daemon's own); Rdomain the one the TAP lives in.
	TunnelDomain string
	Rdomain      string
	// TunnelDev is sensor mode: receive every ERSPAN packet seen on this
	// interface of the tunnel's namespace, addressed to this host or not.
	// Src, Dst and VNetID then only filter.
	TunnelDev string
}

// TxPrioPacket is Config.TxPrio for OpenBSD's `txprio packet`: the
// frame's own priority (its 802.1Q PCP, 3 when untagged).
const TxPrioPacket = -1

// Socket is a batched receiver of GRE packets, the contract GRESocket
// implements; tests substitute an in-memory one.
type Socket interface {
	// ReadBatch blocks until at least one packet is there and returns the
	// packets read; the slice and the buffers it points into are reused by
	// the next call. After Close it returns an error wrapping
	// net.ErrClosed.
	ReadBatch() ([]Message, error)
	// KernelDrops is the cumulative count of packets the kernel dropped
	// for want of buffer space.
	KernelDrops() uint64
	Close() error
}

// Sender transmits GRE packets of one tunnel.
type Sender interface {
	// SendBatch sends each pkts[i], which starts at the GRE header, with
	// outer TOS (IPv4) or traffic class (IPv6) tos[i]. It reports how many
	// went out, how many were refused as too big to send with DF set, and
	// the total length of those that went out; the rest failed, err
	// saying why.
	SendBatch(pkts [][]byte, tos []uint8) (sent, tooBig int, bytes uint64, err error)
	Close() error
}

// FrameWriter writes frames into TAP queues in batches: Add queues them,
// Flush writes them all, in order, with as few system calls as the
// platform allows. One goroutine uses a FrameWriter at a time.
//
// A batch (from its first Add to its Flush) may keep every queue's Close
// waiting, in the whole process (Linux: a queue's descriptor must not be
// closed while a batch holds its number): the goroutine must Flush
// without first blocking on anything a closing goroutine may hold, nor
// close a queue itself in between.
type FrameWriter interface {
	// Add queues frame for q. The frame must stay unchanged until Flush
	// returns. It reports false, queuing nothing, when the batch is full.
	// A frame for a queue closed before it was added fails at Flush with
	// an error wrapping os.ErrClosed.
	Add(q Queue, frame []byte) bool
	// Flush writes every frame queued since the last Flush and returns
	// the result of each, in the order added: nil when written whole. The
	// slice is reused by the next Flush.
	Flush() []error
	// Close drops the frames added since the last Flush, unwritten.
	Close() error
}

// System is what the Host needs from the operating system. Linux is the
// real one; tests use in-memory doubles (like wireguard-go's tuntest). ns
// arguments name a network namespace, "" being the daemon's own.
type System interface {
	// CreateTAP makes (or adopts, reporting true) the TAP in namespace ns.
	CreateTAP(ns, name string, mac net.HardwareAddr, mtu int) (Link, bool, error)
	DeleteTAP(ns, name string) error
	SetLinkUp(ns, name string, up bool) error
	SetMonitor(ns, name string, on bool) error
	SetLinkAttrs(ns, name string, mtu int, mac net.HardwareAddr) error
	// MoveTAP moves the TAP from namespace from to namespace to; queues
	// stay attached.
	MoveTAP(name, from, to string) (Link, error)
	OpenQueue(ns, name string) (Queue, error)
	// NewFrameWriter returns a FrameWriter for up to batch frames per
	// Flush, for the decap path.
	NewFrameWriter(batch int) FrameWriter
	// ListenGRE opens a receive socket for family 4 or 6 in namespace ns.
	ListenGRE(ns string, family int) (Socket, error)
	// ListenCapture opens a capture socket on interface dev of namespace
	// ns (sensor mode); ENODEV when there is no such interface.
	ListenCapture(ns, dev string) (Socket, error)
	CheckDevice(ns, dev string) error
	// OpenSender returns a sender from src to dst in namespace ns (on a
	// send-only socket the namespace's senders may share).
	OpenSender(ns string, src, dst netip.Addr, ttl int, df bool) (Sender, error)
	CheckNamespace(name string) error
	// AddSpan mirrors every frame crossing bridge (in namespace ns) out
	// of TAP tap until the returned function is called, which removes all
	// it added. Errors after it returned (keeping up with the bridge's
	// ports) go to report.
	AddSpan(ns, bridge, tap string, tapIndex int, report func(error)) (func() error, error)
}

// Logger is a tiny injectable logger; nil functions discard. Nothing is
// logged per packet.
type Logger struct {
	Verbosef func(format string, args ...any)
	Errorf   func(format string, args ...any)
}

func (l *Logger) verbosef(format string, args ...any) {
	if l != nil && l.Verbosef != nil {
		l.Verbosef(format, args...)
	}
}

func (l *Logger) errorf(format string, args ...any) {
	if l != nil && l.Errorf != nil {
		l.Errorf(format, args...)
	}
}

// iface is one erspanN as the data path holds it.
type iface struct {
	// name is cfg.Name, for the data path's log lines: cfg is written
	// under Host.mu, and the data path never reads it.
	name  string
	cfg   Config
	link  Link
	queue Queue
	stats ifStats
	flows flowTable

	// tx is what the transmit loop needs, nil when the interface may not
	// send (down, or no destination or session).
	tx  atomic.Pointer[txState]
	seq atomic.Uint32 // the next GRE sequence number to send
	// txDone is closed when the transmit loop has ended.
	txDone chan struct{}
}

// recvKey names a receive socket: a raw GRE socket of a family in a
// namespace, or (dev set, family 0) a capture socket on an interface.
type recvKey struct {
	ns     string
	family int
	dev    string
}

// Host owns every erspanN of the daemon: their TAPs, the receive sockets and
// the demux tables. Its methods are safe for concurrent use; control
// operations are serialised. The data path takes no lock per packet: the
// demux table is read without one; a receiver's frame writer takes the
// writers' shared read lock (tapBatches on Linux) once per batch, a
// transmit loop its TAP queue's read lock once per batch of reads, a flow
// table's lock is taken once per new source. Closing a TAP queue
// (destroy, a failed create) waits for the batches the receivers are
// writing.
type Host struct {
	sys System
	log *Logger

	mu     sync.Mutex // serialises control operations
	ifaces map[string]*iface
	// One receiver per (tunnel namespace, address family) that an up
	// interface needs (design.md, Data path).
	recv  map[recvKey]*receiver
	spans map[spanKey]func() error
	// stats hold what receivers already stopped counted, and
	// closedKernelDrops their sockets' kernel drops; live receivers keep
	// their own (receiver.stats, Socket.KernelDrops). Guarded by mu.
	stats             daemonStats
	closedKernelDrops uint64
	// deny is OpenBSD's net.inet.gre.allow=0: every GRE packet is dropped
	// and counted. Stored negated so that the zero value allows.
	deny atomic.Bool
}

// SetGREAllow sets net.inet.gre.allow: false drops (and counts) all GRE.
func (h *Host) SetGREAllow(allow bool) { h.deny.Store(!allow) }

// GREAllow reports net.inet.gre.allow.
func (h *Host) GREAllow() bool { return !h.deny.Load() }

// CheckDevice returns an error wrapping ENODEV when namespace ns has no
// interface dev.
func (h *Host) CheckDevice(ns, dev string) error { return h.sys.CheckDevice(ns, dev) }

type spanKey struct{ bridge, iface string }

// NewHost returns a Host that realises interfaces through sys.
func NewHost(sys System, log *Logger) *Host {
	return &Host{sys: sys, log: log, ifaces: make(map[string]*iface), recv: make(map[recvKey]*receiver),
		spans: make(map[spanKey]func() error)}
}

// CheckNamespace reports whether network namespace name exists.
func (h *Host) CheckNamespace(name string) error { return h.sys.CheckNamespace(name) }

// Create makes the TAP for cfg.Name in namespace cfg.Rdomain (or adopts one
// a previous erspand made), attaches a queue and applies cfg. The error
// wraps the errno of the step that failed (EEXIST for a foreign link).
func (h *Host) Create(cfg Config) (Link, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.ifaces[cfg.Name]; ok {
		return Link{}, fmt.Errorf("%s exists: %w", cfg.Name, unix.EEXIST)
	}
	link, adopted, err := h.sys.CreateTAP(cfg.Rdomain, cfg.Name, cfg.LLAddr, cfg.MTU)
	if err != nil {
		return Link{}, err
	}
	if adopted {
		h.log.verbosef("%s: adopted the existing TAP (index %d)", cfg.Name, link.Index)
	}
	q, err := h.sys.OpenQueue(cfg.Rdomain, cfg.Name)
	if err != nil {
		h.undoCreate(cfg.Rdomain, cfg.Name, adopted)
		return Link{}, fmt.Errorf("attach a queue to %s: %w", cfg.Name, err)
	}
	ifc := &iface{name: cfg.Name, link: link, queue: q, txDone: make(chan struct{})}
	// Start from the state a new link is in and move it to cfg, so that
	// Create and Update share one path.
	ifc.cfg = Config{Name: cfg.Name, VNetID: NoSession, MTU: link.MTU, LLAddr: link.MAC, Rdomain: cfg.Rdomain}
	h.ifaces[cfg.Name] = ifc
	if err := h.apply(ifc, cfg, true); err != nil {
		delete(h.ifaces, cfg.Name)
		q.Close()
		h.undoCreate(cfg.Rdomain, cfg.Name, adopted)
		return Link{}, err
	}
	go h.transmit(ifc)
	return ifc.link, nil
}

func (h *Host) undoCreate(ns, name string, adopted bool) {
	if adopted {
		return
	}
	if err := h.sys.DeleteTAP(ns, name); err != nil {
		h.log.errorf("%s: removing the half-made TAP: %v", name, err)
	}
}

// Update moves an existing interface to cfg.
func (h *Host) Update(cfg Config) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	ifc, ok := h.ifaces[cfg.Name]
	if !ok {
		return fmt.Errorf("%s: %w", cfg.Name, unix.ENXIO)
	}
	return h.apply(ifc, cfg, false)
}

// apply realises cfg on ifc, step by step in an order that keeps the
// interface consistent. On failure ifc keeps its previous configuration;
// the steps already taken are undone where that is possible.
func (h *Host) apply(ifc *iface, cfg Config, fresh bool) (err error) {
	old := ifc.cfg
	name := cfg.Name
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	moved := false
	if cfg.Rdomain != old.Rdomain {
		link, err := h.sys.MoveTAP(name, old.Rdomain, cfg.Rdomain)
		if err != nil {
			return fmt.Errorf("move %s to network namespace %q: %w", name, cfg.Rdomain, err)
		}
		ifc.link, moved = link, true
		undo = append(undo, func() {
			if l, err := h.sys.MoveTAP(name, cfg.Rdomain, old.Rdomain); err == nil {
				ifc.link = l
				_ = h.sys.SetMonitor(old.Rdomain, name, old.Monitor)
				_ = h.sys.SetLinkUp(old.Rdomain, name, old.Up)
			}
		})
	}
	ns := cfg.Rdomain
	// A move resets the link: it arrives down, without a clsact qdisc
	// (a tcx program stays with it), with fresh IPv6 settings. Everything
	// is applied again (SetMonitor finds what stayed).
	if fresh || moved || cfg.MTU != old.MTU || !bytes.Equal(cfg.LLAddr, old.LLAddr) {
		if err := h.sys.SetLinkAttrs(ns, name, cfg.MTU, cfg.LLAddr); err != nil {
			return fmt.Errorf("set mtu %d lladdr %s on %s: %w", cfg.MTU, cfg.LLAddr, name, err)
		}
		ifc.link.MTU, ifc.link.MAC = cfg.MTU, cfg.LLAddr
		undo = append(undo, func() { _ = h.sys.SetLinkAttrs(ns, name, old.MTU, old.LLAddr) })
	}
	if fresh || moved || cfg.Monitor != old.Monitor {
		if err := h.sys.SetMonitor(ns, name, cfg.Monitor); err != nil {
			return fmt.Errorf("monitor mode on %s: %w", name, err)
		}
		undo = append(undo, func() { _ = h.sys.SetMonitor(ns, name, old.Monitor) })
	}
	if moved || cfg.Up != old.Up {
		if err := h.sys.SetLinkUp(ns, name, cfg.Up); err != nil {
			return fmt.Errorf("set %s %s: %w", name, upDownWord(cfg.Up), err)
		}
		undo = append(undo, func() { _ = h.sys.SetLinkUp(ns, name, old.Up) })
	}
	if err := h.applyTx(ifc, &old, &cfg); err != nil {
		return err
	}
	ifc.cfg = cfg
	if !demuxChanged(&old, &cfg) {
		return nil
	}
	if err := h.rebuild(); err != nil {
		ifc.cfg = old
		_ = h.applyTx(ifc, &cfg, &old)
		_ = h.rebuild()
		return err
	}
	return nil
}

// demuxChanged reports whether going from old to cfg changes the demux
// tables, which hold only the interfaces that are up, by the settings
// buildTable reads. Rebuilding them walks every interface: done for every
// setting, creating n interfaces cost n² (84% of the time at 2048); now
// only bringing n interfaces up does (0.2 s at 1024, in memory).
func demuxChanged(old, cfg *Config) bool {
	if !old.Up && !cfg.Up {
		return false
	}
	return old.Up != cfg.Up || old.Src != cfg.Src || old.Dst != cfg.Dst || old.VNetID != cfg.VNetID ||
		old.Monitor != cfg.Monitor || old.TunnelDomain != cfg.TunnelDomain || old.TunnelDev != cfg.TunnelDev
}

// Destroy removes the interface and its TAP. Once the interface exists it
// is forgotten whatever happens; an error then says the TAP could not be
// removed and is left behind.
func (h *Host) Destroy(name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	ifc, ok := h.ifaces[name]
	if !ok {
		return fmt.Errorf("%s: %w", name, unix.ENXIO)
	}
	h.stopSpans(name)
	delete(h.ifaces, name)
	// Out of the demux tables before the queue closes, so that receivers
	// stop writing to it; one still holding an old table meets a closed
	// file and counts an error on an interface about to vanish. A down
	// one is in no table.
	if ifc.cfg.Up {
		if err := h.rebuild(); err != nil {
			h.log.errorf("%s: %v", name, err)
		}
	}
	h.stopTx(ifc)
	// ENXIO: the TAP is gone already (ip link del), or the name is now
	// somebody else's link, which is not ours to remove: destroyed.
	if err := h.sys.DeleteTAP(ifc.cfg.Rdomain, name); err != nil && !errors.Is(err, unix.ENXIO) {
		del := "ip link del " + name
		if ns := ifc.cfg.Rdomain; ns != "" {
			del = "ip -n " + ns + " link del " + name
		}
		return fmt.Errorf("the TAP %s is left behind (remove it with %s): %w", name, del, err)
	}
	return nil
}

// AddSpan makes interface name a span port of bridge, which must be in
// the same network namespace (OpenBSD's addspan). Adding it twice is one.
func (h *Host) AddSpan(bridge, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	ifc, ok := h.ifaces[name]
	if !ok {
		return fmt.Errorf("%s: %w", name, unix.ENXIO)
	}
	k := spanKey{bridge, name}
	if h.spans[k] != nil {
		return nil
	}
	report := func(err error) { h.log.errorf("%v", err) }
	stop, err := h.sys.AddSpan(ifc.cfg.Rdomain, bridge, name, ifc.link.Index, report)
	if err != nil {
		return err
	}
	h.spans[k] = stop
	return nil
}

// DelSpan removes the span port and every rule it added.
func (h *Host) DelSpan(bridge, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := spanKey{bridge, name}
	stop := h.spans[k]
	if stop == nil {
		return fmt.Errorf("%s is not a span port of %s: %w", name, bridge, unix.ENOENT)
	}
	delete(h.spans, k)
	return stop()
}

func (h *Host) stopSpans(name string) {
	for k, stop := range h.spans {
		if k.iface == name {
			if err := stop(); err != nil {
				h.log.errorf("%s: removing span rules on %s: %v", name, k.bridge, err)
			}
			delete(h.spans, k)
		}
	}
}

// stopTx ends the transmit side of ifc: its sender and its loop.
func (h *Host) stopTx(ifc *iface) {
	if st := ifc.tx.Swap(nil); st != nil {
		st.sender.Close()
	}
	ifc.queue.Close()
	<-ifc.txDone
}

// Link returns what is known of the interface's link.
func (h *Host) Link(name string) (Link, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ifc, ok := h.ifaces[name]
	if !ok {
		return Link{}, false
	}
	return ifc.link, true
}

// Counters returns a snapshot of one interface's counters.
func (h *Host) Counters(name string) IfCounters {
	h.mu.Lock()
	ifc := h.ifaces[name]
	h.mu.Unlock()
	if ifc == nil {
		return IfCounters{}
	}
	return ifc.stats.snapshot()
}

// Seq is the GRE sequence number the interface sends next.
func (h *Host) Seq(name string) uint32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ifc := h.ifaces[name]; ifc != nil {
		return ifc.seq.Load()
	}
	return 0
}

// SetSeq sets the next GRE sequence number, for a restarted daemon.
func (h *Host) SetSeq(name string, seq uint32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ifc := h.ifaces[name]; ifc != nil {
		ifc.seq.Store(seq)
	}
}

// Flows returns the mirror-loss counters of one interface, per (source,
// session), and the packets from sources beyond the tracking limit.
func (h *Host) Flows(name string) ([]Flow, uint64) {
	h.mu.Lock()
	ifc := h.ifaces[name]
	h.mu.Unlock()
	if ifc == nil {
		return nil, 0
	}
	return ifc.flows.snapshot()
}

// DaemonCounters returns a snapshot of the daemon-wide counters.
func (h *Host) DaemonCounters() DaemonCounters {
	var c DaemonCounters
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stats.addTo(&c)
	c.KernelDrops = h.closedKernelDrops
	for _, r := range h.recv {
		r.stats.addTo(&c)
		c.KernelDrops += r.sock.KernelDrops()
	}
	return c
}

// Close stops the receivers and transmitters and detaches every queue. The
// TAPs persist, as interfaces do when OpenBSD's ifconfig exits; a new
// daemon adopts them.
func (h *Host) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	ifs := h.ifaces
	for name := range ifs {
		h.stopSpans(name)
	}
	h.ifaces = map[string]*iface{}
	_ = h.rebuild() // with no interfaces: stops every receiver
	for _, ifc := range ifs {
		h.stopTx(ifc)
	}
	return nil
}

// rebuild publishes new demux tables for the current interfaces and opens
// or closes receive sockets to match. It is called with h.mu held.
func (h *Host) rebuild() error {
	// The up interfaces grouped by place (namespace, capture device or
	// ""), in one pass: each table is built from its own, not from every
	// interface once per place.
	places := map[recvKey][]*iface{}
	for _, ifc := range h.ifaces {
		if ifc.cfg.Up {
			p := recvKey{ns: ifc.cfg.TunnelDomain, dev: ifc.cfg.TunnelDev}
			places[p] = append(places[p], ifc)
		}
	}
	tables := map[recvKey]*demuxTable{}
	for p, ifs := range places {
		t := buildTable(ifs, p.ns, p.dev)
		if p.dev != "" {
			// One capture socket per interface, whatever the families:
			// several erspanN share it (issue: sensor mode).
			tables[p] = t
			continue
		}
		for i, need := range t.families {
			if need {
				tables[recvKey{ns: p.ns, family: 4 + 2*i}] = t
			}
		}
	}
	// Open sockets before publishing tables, close them after: a socket
	// must exist whenever an interface needs it, and while one exists the
	// kernel sends no ICMP protocol-unreachable to the switch.
	for k := range tables {
		if h.recv[k] == nil {
			if err := h.startReceiver(k); err != nil {
				return err
			}
		}
	}
	for k, r := range h.recv {
		if t := tables[k]; t != nil {
			r.table.Store(t)
		} else {
			h.stopReceiver(k)
		}
	}
	return nil
}

func (h *Host) startReceiver(k recvKey) error {
	var s Socket
	var err error
	where := ""
	if k.ns != "" {
		where = " in network namespace " + k.ns
	}
	if k.dev != "" {
		if s, err = h.sys.ListenCapture(k.ns, k.dev); err != nil {
			return fmt.Errorf("capture ERSPAN on %s%s: %w", k.dev, where, err)
		}
	} else if s, err = h.sys.ListenGRE(k.ns, k.family); err != nil {
		return fmt.Errorf("open the IPv%d GRE receive socket%s: %w", k.family, where, err)
	} else if r, ok := s.(interface{ RingError() error }); ok && r.RingError() != nil {
		h.log.errorf("the IPv%d GRE receive socket%s reads with recvmmsg, at more CPU per frame, as the kernel refused its eBPF ring: %v (erspand --rx-ring=false says so without this line)",
			k.family, where, r.RingError())
	}
	r := newReceiver(h, s)
	h.recv[k] = r
	go r.run()
	h.log.verbosef("receiving ERSPAN: %+v", k)
	return nil
}

func (h *Host) stopReceiver(k recvKey) {
	r := h.recv[k]
	if r == nil {
		return
	}
	delete(h.recv, k)
	r.sock.Close()
	<-r.done
	r.stats.fold(&h.stats)
	h.closedKernelDrops += r.sock.KernelDrops()
}

// upDownWord names the state for messages.
func upDownWord(up bool) string {
	if up {
		return "up"
	}
	return "down"
}
