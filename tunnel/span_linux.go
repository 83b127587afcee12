package tunnel

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A span port (OpenBSD's `ifconfig bridge0 addspan erspan0`) is built
// from one tc rule per place a frame crosses a Linux bridge: at ingress of
// every member port (frames entering the bridge, whether forwarded or for
// the host) and at egress of the bridge device (frames the host sends
// through it). Each frame is mirrored once. The rule is a cls_bpf program
// in direct-action mode that clones the frame to the TAP's egress, so it
// leaves erspanN and is sent as ERSPAN, and then lets the frame go on
// (TC_ACT_UNSPEC: the next filter decides). It skips packets carrying
// SocketMark: should the tunnel run through the same bridge, erspand's own
// ERSPAN packets would otherwise be mirrored again, for ever.

func spanFilterName(tap string) string { return "erspan-span-" + tap }

// spanPriority is the tc priority of every span rule. Rules for several
// erspanN on one link coexist in one cls_bpf instance, told apart by their
// handle, the TAP's ifindex (unique in the namespace; a priority derived
// from it would have to fold 31 bits into 16, and rules whose TAPs folded
// alike replaced each other). Each returns TC_ACT_UNSPEC, so the next one
// runs too.
const spanPriority = 0x4000

// spanProgram returns the instructions of the span rule for TAP tapIndex.
func spanProgram(tapIndex int) []bpfInsn {
	const (
		skbMarkOffset     = 8  // offsetof(struct __sk_buff, mark)
		bpfFuncCloneRedir = 13 // BPF_FUNC_clone_redirect
		tcActUnspec       = -1
	)
	return []bpfInsn{
		insn(0xbf, 6, 1, 0, 0),                 // r6 = r1 (the skb)
		insn(0x61, 2, 1, skbMarkOffset, 0),     // r2 = skb->mark
		insn(0x15, 2, 0, 4, SocketMark),        // if r2 == SocketMark goto out
		insn(0xbf, 1, 6, 0, 0),                 // r1 = r6
		insn(0xb7, 2, 0, 0, int32(tapIndex)),   // r2 = the TAP's ifindex
		insn(0xb7, 3, 0, 0, 0),                 // r3 = 0: to its egress
		insn(0x85, 0, 0, 0, bpfFuncCloneRedir), // bpf_clone_redirect(r1, r2, r3)
		insn(0xb7, 0, 0, 0, tcActUnspec),       // out: r0 = TC_ACT_UNSPEC
		insn(0x95, 0, 0, 0, 0),                 // exit
	}
}

// spanRule is one span port's rule: the filter put on a bridge and its
// ports, running the span's program, loaded once per span (newSpanRule)
// rather than once per port and reconcile. close gives the program back;
// the filters keep references of their own.
type spanRule struct {
	tap      string
	tapIndex int
	prog     int // the program's fd
}

func newSpanRule(tap string, tapIndex int) (spanRule, error) {
	fd, err := loadProgram(unix.BPF_PROG_TYPE_SCHED_CLS, spanProgram(tapIndex), "erspan_span")
	if err != nil {
		return spanRule{}, err
	}
	return spanRule{tap: tap, tapIndex: tapIndex, prog: fd}, nil
}

func (r spanRule) close() { unix.Close(r.prog) }

func (r spanRule) filter(link, parent, fd int) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: link,
			Parent:    uint32(parent),
			Handle:    uint32(r.tapIndex),
			Protocol:  unix.ETH_P_ALL,
			Priority:  spanPriority,
		},
		Fd:           fd,
		Name:         spanFilterName(r.tap),
		DirectAction: true,
	}
}

// has reports whether our rule is on the link at parent (false when the
// filters cannot be listed: adding then fails with the reason).
func (r spanRule) has(l netlink.Link, parent uint32) bool {
	fs, err := filterList(l, parent)
	if err != nil {
		return false
	}
	for _, f := range fs {
		// Exact: erspan-span-erspan1 is a prefix of erspan-span-erspan10.
		if b, ok := f.(*netlink.BpfFilter); ok && b.Name == spanFilterName(r.tap) {
			return true
		}
	}
	return false
}

func (r spanRule) add(l netlink.Link, parent uint32) error {
	idx := l.Attrs().Index
	if _, _, err := ensureClsact(l); err != nil {
		return err
	}
	if err := netlink.FilterReplace(r.filter(idx, int(parent), r.prog)); err != nil {
		return fmt.Errorf("span rule on %s: %w", l.Attrs().Name, err)
	}
	return nil
}

func (r spanRule) del(l netlink.Link, parent uint32) error {
	if !r.has(l, parent) {
		return nil
	}
	err := netlink.FilterDel(r.filter(l.Attrs().Index, int(parent), -1))
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove the span rule on %s: %w", l.Attrs().Name, err)
	}
	// As monitor mode does: the qdisc goes once nothing uses it.
	q, err := findClsact(l)
	if err != nil || q == nil {
		return err
	}
	return removeClsactIfEmpty(l, q)
}

// reconcile puts the rule on the bridge's egress and on the ingress of
// every member port, and takes it off links that are no longer members.
// remove takes it off everything. It runs in the bridge's namespace, and
// lists every link's filters: the watcher does it when it starts or may
// have missed changes, and otherwise looks at the links that changed
// (update). It returns the bridge's ifindex (0 when it is gone or remove
// is set) and records in ports the links that carry the rule at ingress.
func (r spanRule) reconcile(bridge string, remove bool, ports map[int]bool) (int, error) {
	clear(ports)
	var errs []error
	brIndex := 0
	br, err := linkNamed(bridge, unix.ENODEV)
	switch {
	case err != nil && !remove:
		// Reported; the rule still comes off the bridge's former ports,
		// whose frames no longer cross a bridge.
		errs = append(errs, err)
	case err != nil:
	default:
		if _, ok := br.(*netlink.Bridge); !ok {
			return 0, fmt.Errorf("%s is a %s, not a bridge: %w", bridge, br.Type(), unix.EINVAL)
		}
		if remove {
			errs = append(errs, r.del(br, netlink.HANDLE_MIN_EGRESS))
		} else {
			brIndex = br.Attrs().Index
			if !r.has(br, netlink.HANDLE_MIN_EGRESS) {
				errs = append(errs, r.add(br, netlink.HANDLE_MIN_EGRESS))
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return 0, errors.Join(append(errs, err)...)
	}
	for _, l := range links {
		member := brIndex != 0 && l.Attrs().MasterIndex == brIndex
		has := r.has(l, netlink.HANDLE_MIN_INGRESS)
		switch {
		case member && !has:
			err := r.add(l, netlink.HANDLE_MIN_INGRESS)
			errs = append(errs, err)
			has = err == nil
		case !member && has:
			err := r.del(l, netlink.HANDLE_MIN_INGRESS)
			errs = append(errs, err)
			has = err != nil
		}
		if has {
			ports[l.Attrs().Index] = true
		}
	}
	return brIndex, errors.Join(errs...)
}

// portChange says what one link change asks of the rules, from what the
// watcher knows: add (a link that is now a port of the bridge, ifindex
// brIndex, and has no rule) or del (one of ports that no longer is a
// port). A link removed is forgotten here: its rules went with it. Other
// changes ask nothing, and cost no netlink request: listing every link's
// filters per change made a bulk create of a thousand interfaces
// quadratic.
func portChange(u netlink.LinkUpdate, brIndex int, ports map[int]bool) (add, del bool) {
	idx := u.Link.Attrs().Index
	if u.Header.Type == unix.RTM_DELLINK {
		// The bridge's own AF_BRIDGE report of a port leaving it is no
		// removal: the link's RTM_NEWLINK (no master now) says what
		// became of it.
		if u.Family != unix.AF_BRIDGE {
			delete(ports, idx)
		}
		return false, false
	}
	member := brIndex != 0 && u.Link.Attrs().MasterIndex == brIndex
	return member && !ports[idx], !member && ports[idx]
}

// update adds the rule to link l (add) or takes it off, in the bridge's
// namespace, and records the outcome in ports.
func (r spanRule) update(l netlink.Link, add bool, ports map[int]bool) error {
	idx := l.Attrs().Index
	var err error
	if add {
		if !r.has(l, netlink.HANDLE_MIN_INGRESS) {
			err = r.add(l, netlink.HANDLE_MIN_INGRESS)
		}
		if err == nil {
			ports[idx] = true
		}
	} else {
		delete(ports, idx)
		err = r.del(l, netlink.HANDLE_MIN_INGRESS)
	}
	if errors.Is(err, unix.ENODEV) {
		// A report of a link removed since: its removal's report
		// follows.
		delete(ports, idx)
		return nil
	}
	return err
}

// span is a running span port: its rules and the watcher that covers
// ports joining the bridge later.
type span struct {
	home       netns.NsHandle // the daemon's namespace, for ns ""
	ns, bridge string
	rule       spanRule
	report     func(error)
	done       chan struct{}
	stopped    chan struct{}
	// brIndex and ports are used by startSpan, then by the watcher
	// alone, then by stop once the watcher has ended: no lock.
	brIndex int                          // the bridge's ifindex at the last reconcile
	ports   map[int]bool                 // the links with the rule at ingress
	sub     atomic.Pointer[subscription] // the watcher's; swapped on resubscribe
}

// AddSpan mirrors every frame crossing bridge (in namespace ns) out of TAP
// tap, until the returned stop function is called, which removes every rule
// it added. Ports that join the bridge later are covered within moments;
// what goes wrong then (a rule that cannot be added, link changes the
// kernel could not report) is passed to report, which must not block.
func (l *Linux) AddSpan(ns, bridge, tap string, tapIndex int, report func(error)) (func() error, error) {
	rule, err := newSpanRule(tap, tapIndex)
	if err != nil {
		return nil, err
	}
	s, err := startSpan(l.home, ns, bridge, rule, report)
	if err != nil {
		rule.close()
		return nil, err
	}
	return s.stop, nil
}

func startSpan(home netns.NsHandle, ns, bridge string, rule spanRule, report func(error)) (*span, error) {
	s := &span{home: home, ns: ns, bridge: bridge, rule: rule, ports: map[int]bool{},
		report: report, done: make(chan struct{}), stopped: make(chan struct{})}
	// Watch first, then put the rules in place: a port that joins in
	// between is seen by the watcher rather than missed.
	sub, err := s.subscribe()
	if err != nil {
		return nil, err
	}
	if err := s.reconcile(false); err != nil {
		sub.cancel()
		_ = s.reconcile(true)
		return nil, err
	}
	s.sub.Store(sub)
	go s.watch()
	return s, nil
}

// subscription is one netlink subscription to the link changes of the
// span's namespace.
type subscription struct {
	updates chan netlink.LinkUpdate
	done    chan struct{}
	once    sync.Once
	// err is the last error the library reported (a Pointer: the errors
	// are of several types, which atomic.Value refuses).
	err atomic.Pointer[error]
}

func (s *span) subscribe() (*subscription, error) {
	// The subscription's socket keeps the namespace.
	handle, closeNS, err := openNamespace(s.home, s.ns)
	if err != nil {
		return nil, err
	}
	defer closeNS()
	sub := &subscription{updates: make(chan netlink.LinkUpdate, 64), done: make(chan struct{})}
	err = netlink.LinkSubscribeWithOptions(sub.updates, sub.done, netlink.LinkSubscribeOptions{
		Namespace: &handle, ErrorCallback: func(err error) { sub.err.Store(&err) }})
	if err != nil {
		return nil, fmt.Errorf("watch the ports of %s: %w", s.bridge, err)
	}
	return sub, nil
}

// cancel closes the subscription's socket and waits for the library's
// reader to end, which it does once the socket is closed (netlink v1.3
// reads through the netpoller). Draining matters: a reader blocked on a
// full channel would never see the close.
func (c *subscription) cancel() {
	c.once.Do(func() { close(c.done) })
	for range c.updates {
	}
}

func (c *subscription) lastErr() error {
	if p := c.err.Load(); p != nil {
		return *p
	}
	return errors.New("no error given")
}

func (s *span) reconcile(remove bool) error {
	return inNamespace(s.ns, func() (err error) {
		s.brIndex, err = s.rule.reconcile(s.bridge, remove, s.ports)
		return err
	})
}

// apply applies a burst of link changes, in order: a port that leaves
// and joins again within one burst ends up with the rule. Only a change
// of which link is the bridge (made again, renamed, another link taking
// its name) or the bridge's removal calls for a whole reconcile: the
// bridge's other changes (its MTU, address or carrier, which follow a
// port joining) do not. The namespace is entered only from the first
// change that adds a rule or takes one off: most changes of a port, its
// carrier or MTU, do neither, and those before it at most forget a
// removed link, which needs no namespace.
func (s *span) apply(burst []netlink.LinkUpdate) error {
	for _, u := range burst {
		a := u.Link.Attrs()
		isBr, named := s.brIndex != 0 && a.Index == s.brIndex, a.Name == s.bridge
		if isBr != named || (isBr && u.Header.Type == unix.RTM_DELLINK && u.Family != unix.AF_BRIDGE) {
			return s.reconcile(false)
		}
	}
	// change is portChange for a port's change; the bridge's ask nothing.
	// (The bridge's AF_BRIDGE report of itself, after a change of its
	// VLANs (bridge vlan add ... self), names it as its own master: to
	// portChange, a port joining.)
	change := func(u netlink.LinkUpdate) (add, del bool) {
		if s.brIndex != 0 && u.Link.Attrs().Index == s.brIndex {
			return false, false
		}
		return portChange(u, s.brIndex, s.ports)
	}
	for i, u := range burst {
		if add, del := change(u); !add && !del {
			continue
		}
		// burst[i] is asked again below: a change that adds or takes
		// off a rule has no effect on ports of its own.
		return inNamespace(s.ns, func() error {
			var errs []error
			for _, u := range burst[i:] {
				if add, del := change(u); add || del {
					errs = append(errs, s.rule.update(u.Link, add, s.ports))
				}
			}
			return errors.Join(errs...)
		})
	}
	return nil
}

// watch applies link changes, a burst at a time, until stop. The library
// ends a subscription on any receive error, ENOBUFS among them: the kernel
// dropped changes a burst of them (say, creating a thousand interfaces)
// did not leave room for. The watcher then subscribes again and
// reconciles every link, which covers whatever was missed.
func (s *span) watch() {
	defer close(s.stopped)
	sub := s.sub.Load()
	burst := make([]netlink.LinkUpdate, 0, cap(sub.updates)+1)
	for {
		select {
		case <-s.done:
			sub.cancel()
			return
		case u, ok := <-sub.updates:
			if !ok {
				sub.cancel()
				if sub = s.resubscribe(sub.lastErr()); sub == nil {
					return // stopped meanwhile
				}
				s.check(s.reconcile(false))
				continue
			}
			burst = append(burst[:0], u)
			for len(sub.updates) > 0 && len(burst) < cap(burst) {
				burst = append(burst, <-sub.updates)
			}
			s.check(s.apply(burst))
			clear(burst)
		}
	}
}

// resubscribe subscribes again after a subscription ended on error cause,
// retrying every second until it can or stop is called (then it returns
// nil).
func (s *span) resubscribe(cause error) *subscription {
	s.check(fmt.Errorf("link change reports ended (%v), changes may have been missed: watching again and checking every port", cause))
	for {
		sub, err := s.subscribe()
		if err == nil {
			s.sub.Store(sub)
			return sub
		}
		s.check(err)
		select {
		case <-s.done:
			return nil
		case <-time.After(time.Second):
		}
	}
}

// check reports err, if any, naming the span port.
func (s *span) check(err error) {
	if err != nil && s.report != nil {
		s.report(fmt.Errorf("span port %s of %s: %w", s.rule.tap, s.bridge, err))
	}
}

func (s *span) stop() error {
	close(s.done)
	<-s.stopped
	defer s.rule.close()
	return s.reconcile(true)
}
