package tunnel

import (
	"errors"
	"fmt"
	"sync"

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

// spanPriority gives each span target its own tc priority, so that rules
// for several erspanN on one bridge coexist.
func spanPriority(tapIndex int) uint16 { return uint16(0x4000 + tapIndex%0x3fff) }

// spanProgram returns the instructions of the span rule for TAP tapIndex.
func spanProgram(tapIndex int) []bpfInsn {
	insn := func(code, dst, src uint8, off int16, imm int32) bpfInsn {
		return bpfInsn{code: code, regs: src<<4 | dst, off: off, imm: imm}
	}
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

// ensureClsact adds a clsact qdisc unless the link has one: an existing
// one may carry somebody else's filters and is left alone.
func ensureClsact(index int) error {
	err := netlink.QdiscAdd(&netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

type spanRule struct {
	tap      string
	tapIndex int
}

func (r spanRule) filter(link, parent, fd int) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: link,
			Parent:    uint32(parent),
			Handle:    netlink.MakeHandle(0, 1),
			Protocol:  unix.ETH_P_ALL,
			Priority:  spanPriority(r.tapIndex),
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
	if err := ensureClsact(idx); err != nil {
		return fmt.Errorf("clsact on %s: %w", l.Attrs().Name, err)
	}
	fd, err := loadProgram(spanProgram(r.tapIndex), "erspan_span")
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := netlink.FilterReplace(r.filter(idx, int(parent), fd)); err != nil {
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
	return nil
}

// reconcile puts the rule on the bridge's egress and on the ingress of
// every member port, and takes it off links that are no longer members.
// remove takes it off everything. It runs in the bridge's namespace.
func (r spanRule) reconcile(bridge string, remove bool) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		if remove {
			return nil // the bridge is gone, and its ports' rules with it
		}
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			return fmt.Errorf("no interface %s: %w", bridge, unix.ENODEV)
		}
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return fmt.Errorf("%s is a %s, not a bridge: %w", bridge, br.Type(), unix.EINVAL)
	}
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return err
	}
	var errs []error
	if remove {
		errs = append(errs, r.del(br, netlink.HANDLE_MIN_EGRESS))
	} else if !r.has(br, netlink.HANDLE_MIN_EGRESS) {
		errs = append(errs, r.add(br, netlink.HANDLE_MIN_EGRESS))
	}
	for _, l := range links {
		member := l.Attrs().MasterIndex == br.Attrs().Index && !remove
		has := r.has(l, netlink.HANDLE_MIN_INGRESS)
		switch {
		case member && !has:
			errs = append(errs, r.add(l, netlink.HANDLE_MIN_INGRESS))
		case !member && has:
			errs = append(errs, r.del(l, netlink.HANDLE_MIN_INGRESS))
		}
	}
	return errors.Join(errs...)
}

// span is a running span port: its rules and the watcher that covers
// ports joining the bridge later.
type span struct {
	ns, bridge string
	rule       spanRule
	done       chan struct{}
	stopped    chan struct{}
	mu         sync.Mutex // one reconcile at a time
}

// AddSpan mirrors every frame crossing bridge (in namespace ns) out of TAP
// tap, until the returned stop function is called, which removes every rule
// it added. Ports that join the bridge later are covered within moments.
func (l *Linux) AddSpan(ns, bridge, tap string, tapIndex int) (func() error, error) {
	s := &span{ns: ns, bridge: bridge, rule: spanRule{tap: tap, tapIndex: tapIndex},
		done: make(chan struct{}), stopped: make(chan struct{})}
	if err := s.reconcile(false); err != nil {
		_ = s.reconcile(true)
		return nil, err
	}
	handle := l.home
	if ns != "" {
		h, err := netns.GetFromName(ns)
		if err != nil {
			_ = s.reconcile(true)
			return nil, fmt.Errorf("network namespace %s: %w", ns, err)
		}
		handle = h
	}
	updates := make(chan netlink.LinkUpdate, 64)
	err := netlink.LinkSubscribeWithOptions(updates, s.done, netlink.LinkSubscribeOptions{Namespace: &handle})
	if ns != "" {
		handle.Close()
	}
	if err != nil {
		_ = s.reconcile(true)
		return nil, fmt.Errorf("watch the ports of %s: %w", bridge, err)
	}
	go s.watch(updates)
	return s.stop, nil
}

func (s *span) reconcile(remove bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return inNamespace(s.ns, func() error { return s.rule.reconcile(s.bridge, remove) })
}

func (s *span) watch(updates <-chan netlink.LinkUpdate) {
	defer close(s.stopped)
	for {
		select {
		case <-s.done:
			return
		case _, ok := <-updates:
			if !ok {
				return
			}
			// Drain a burst of updates, then reconcile once.
			for len(updates) > 0 {
				<-updates
			}
			_ = s.reconcile(false)
		}
	}
}

func (s *span) stop() error {
	close(s.done)
	<-s.stopped
	return s.reconcile(true)
}
