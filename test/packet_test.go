package test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/erspan-linux/erspan/erspan"
)

// sender plays the switch: raw IPPROTO_GRE sockets in the switch namespace,
// one per local address, so that the kernel builds the outer IP header and a
// test picks the outer source by picking the socket.
type sender struct {
	t   *testing.T
	ns  *netNS
	fds map[netip.Addr]int
}

// newSender opens one raw GRE socket per switch address inside ns; they are
// closed when the test ends.
func newSender(t *testing.T, ns *netNS) *sender {
	t.Helper()
	s := &sender{t: t, ns: ns, fds: make(map[netip.Addr]int)}
	t.Cleanup(func() {
		for _, fd := range s.fds {
			unix.Close(fd)
		}
	})
	err := ns.do(func() error {
		for _, a := range []netip.Addr{switch4, other4, switch6, other6} {
			fd, err := openGRESender(a)
			if err != nil {
				return err
			}
			s.fds[a] = fd
		}
		return nil
	})
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	return s
}

func openGRESender(src netip.Addr) (int, error) {
	af := unix.AF_INET6
	if src.Is4() {
		af = unix.AF_INET
	}
	fd, err := unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, erspan.IPProtoGRE)
	if err != nil {
		return -1, fmt.Errorf("raw GRE socket: %w", err)
	}
	// The socket only sends: a filter that drops everything keeps it from
	// queueing copies of GRE packets nobody reads.
	drop := []unix.SockFilter{{Code: 0x06, K: 0}} // BPF_RET|BPF_K 0
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: 1, Filter: &drop[0]}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("SO_ATTACH_FILTER: %w", err)
	}
	var sa unix.Sockaddr
	if src.Is4() {
		// Fragment frames larger than the veth MTU instead of refusing
		// them: the collector's kernel reassembles for its raw socket.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("IP_MTU_DISCOVER: %w", err)
		}
		sa = &unix.SockaddrInet4{Addr: src.As4()}
	} else {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DONT); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("IPV6_MTU_DISCOVER: %w", err)
		}
		sa = &unix.SockaddrInet6{Addr: src.As16()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", src, err)
	}
	return fd, nil
}

// send sends payload (a GRE header and what follows) from src to dst.
func (s *sender) send(src, dst netip.Addr, payload []byte) {
	s.t.Helper()
	fd, ok := s.fds[src]
	if !ok {
		s.t.Fatalf("no sender socket for source %s", src)
	}
	var sa unix.Sockaddr
	if dst.Is4() {
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
	} else {
		sa = &unix.SockaddrInet6{Addr: dst.As16()}
	}
	if err := unix.Sendto(fd, payload, 0, sa); err != nil {
		s.t.Fatalf("send %d bytes %s -> %s: %v", len(payload), src, dst, err)
	}
}

// sendWithIPOptions sends payload from src to dst (IPv4) with the given IP
// options in the outer header, from a socket of its own.
func (s *sender) sendWithIPOptions(src, dst netip.Addr, payload, opts []byte) {
	s.t.Helper()
	err := s.ns.do(func() error {
		fd, err := openGRESender(src)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS, string(opts)); err != nil {
			return fmt.Errorf("IP_OPTIONS: %w", err)
		}
		return unix.Sendto(fd, payload, 0, &unix.SockaddrInet4{Addr: dst.As4()})
	})
	if err != nil {
		s.t.Fatalf("send with IP options %s -> %s: %v", src, dst, err)
	}
}

// inject writes frames out of interface ifname of ns with a packet socket:
// into a TAP they are what its daemon reads, as if the host sent them; into
// a veth they arrive at the peer.
func inject(t *testing.T, ns *netNS, ifname string, frames ...[]byte) {
	t.Helper()
	err := ns.do(func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: ifc.Index}
		for i, f := range frames {
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return fmt.Errorf("frame %d (%d bytes): %w", i, len(f), err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("inject into %s in %s: %v", ifname, ns.name, err)
	}
}

// packetReader is an AF_PACKET socket on one interface. It collects, in the
// background, the frames that come in on the interface (for a TAP: what
// the daemon wrote into it) apart from those the namespace sends out of it
// (PACKET_OUTGOING), and both in the order they passed.
type packetReader struct {
	name    string
	index   int
	mac     net.HardwareAddr
	fd      int
	stop    atomic.Bool
	done    chan struct{}
	changed chan struct{}

	mu   sync.Mutex
	in   [][]byte
	out  [][]byte
	both [][]byte
	last time.Time // when the last frame, either way, was read
	err  error
}

// newPacketReader opens the reader on interface ifname of ns; it is closed
// when the test ends. Only frames that pass after it is open are seen.
func newPacketReader(t *testing.T, ns *netNS, ifname string) *packetReader {
	t.Helper()
	r := &packetReader{name: ifname, fd: -1, done: make(chan struct{}), changed: make(chan struct{}, 1)}
	err := ns.do(func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		r.index, r.mac = ifc.Index, ifc.HardwareAddr
		// Protocol 0 until bound to the interface: with ETH_P_ALL at
		// socket() it would see every interface's frames until bind.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		r.fd = fd
		// Room for every frame of a test even if this goroutine lags.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
			return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return fmt.Errorf("PACKET_AUXDATA: %w", err)
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index})
	})
	if err != nil {
		if r.fd >= 0 {
			unix.Close(r.fd)
		}
		t.Fatalf("packet socket on %s in %s: %v", ifname, ns.name, err)
	}
	go r.loop()
	t.Cleanup(func() {
		r.stop.Store(true)
		<-r.done
		unix.Close(r.fd)
		if err := r.readErr(); err != nil {
			t.Errorf("packet socket on %s: %v", ifname, err)
		}
	})
	return r
}

func (r *packetReader) loop() {
	defer close(r.done)
	buf := make([]byte, 1<<16)
	oob := make([]byte, 256)
	pfd := []unix.PollFd{{Fd: int32(r.fd), Events: unix.POLLIN}}
	for !r.stop.Load() {
		n, err := unix.Poll(pfd, 50)
		if err != nil && !errors.Is(err, unix.EINTR) {
			r.fail(fmt.Errorf("poll: %w", err))
			return
		}
		if n <= 0 {
			continue
		}
		m, oobn, _, from, err := unix.Recvmsg(r.fd, buf, oob, unix.MSG_DONTWAIT)
		// ENETDOWN is reported once when the interface goes down (a
		// test taking it down); the socket keeps working.
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENETDOWN) {
			continue
		}
		if err != nil {
			r.fail(fmt.Errorf("recvmsg: %w", err))
			return
		}
		// The kernel moves a received frame's outer VLAN tag out of the
		// data; put it back as tcpdump does, from PACKET_AUXDATA
		// (withVLAN), so frames compare as they were written to the TAP.
		frame := withVLAN(buf[:m], oob[:oobn])
		ll, _ := from.(*unix.SockaddrLinklayer)
		r.mu.Lock()
		if ll != nil && ll.Pkttype == unix.PACKET_OUTGOING {
			r.out = append(r.out, frame)
		} else {
			r.in = append(r.in, frame)
		}
		r.both = append(r.both, frame)
		r.last = time.Now()
		r.mu.Unlock()
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// withVLAN copies frame, putting back the VLAN tag the kernel reported in
// a PACKET_AUXDATA control message.
func withVLAN(frame, oob []byte) []byte {
	f := append([]byte(nil), frame...)
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return f
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_PACKET || m.Header.Type != unix.PACKET_AUXDATA || len(m.Data) < int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
			continue
		}
		aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
		if aux.Status&unix.TP_STATUS_VLAN_VALID == 0 || len(f) < 12 {
			continue
		}
		tpid := uint16(0x8100)
		if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
			tpid = aux.Vlan_tpid
		}
		tag := []byte{byte(tpid >> 8), byte(tpid), byte(aux.Vlan_tci >> 8), byte(aux.Vlan_tci)}
		f = append(f[:12], append(tag, f[12:]...)...)
	}
	return f
}

func (r *packetReader) fail(err error) {
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

func (r *packetReader) readErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// received returns the frames that came in so far.
func (r *packetReader) received() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.in...)
}

// passed returns every frame so far, both ways, in the order they passed
// the interface: what tcpdump on it would show.
func (r *packetReader) passed() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.both...)
}

// settle waits until no frame has passed the interface, either way, for
// settleTime since the call or the last frame, at most frameTimeout: for
// tests that cannot tell how many frames to wait for.
func (r *packetReader) settle() {
	start := time.Now()
	deadline := start.Add(frameTimeout)
	for {
		r.mu.Lock()
		quiet := start
		if r.last.After(quiet) {
			quiet = r.last
		}
		r.mu.Unlock()
		wait := settleTime - time.Since(quiet)
		if wait <= 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(min(wait, time.Until(deadline)+time.Millisecond))
	}
}

// awaitLabel waits (at most frameTimeout) until a frame carrying label
// (labeledFrame's) has passed the interface either way, and fails the test
// if none does. To show that a frame did not pass, a test sends such a
// marker after it along the same path, where frames keep their order: once
// the marker is seen, whatever went before it has been seen too, with no
// quiet period guessed.
func (r *packetReader) awaitLabel(t *testing.T, label string) {
	t.Helper()
	mark := []byte(labelMark + label + "\x00")
	has := func(frames [][]byte) bool {
		return slices.ContainsFunc(frames, func(f []byte) bool { return bytes.Contains(f, mark) })
	}
	if !r.waitUntil(frameTimeout, func(in, out [][]byte) bool { return has(in) || has(out) }) {
		t.Fatalf("the marker frame %q did not pass %s within %v", label, r.name, frameTimeout)
	}
}

// waitUntil waits until cond, called with the frames so far, holds, or
// timeout passes; it reports whether cond held.
func (r *packetReader) waitUntil(timeout time.Duration, cond func(in, out [][]byte) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond(r.in, r.out)
		r.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-r.changed:
		case <-deadline.C:
			r.mu.Lock()
			defer r.mu.Unlock()
			return cond(r.in, r.out)
		}
	}
}

// waitIn waits until n frames have come in (at most frameTimeout) and
// reports whether they did.
func (r *packetReader) waitIn(n int) bool {
	return r.waitUntil(frameTimeout, func(in, _ [][]byte) bool { return len(in) >= n })
}

// deliveries tracks which frames each reader must have received, in order,
// and checks them all at once. Readers that must receive nothing are
// registered with watch, so that a frame sent to the wrong TAP is caught.
type deliveries struct {
	t      *testing.T
	order  []*packetReader
	want   map[*packetReader][][]byte
	labels map[*packetReader][]string
	// nowhere holds frames sent that no interface may deliver, so that
	// failure messages can name them.
	nowhere      [][]byte
	nowhereLabel []string
	// daemon has its counters printed when a check fails.
	daemon *daemon
}

// newDeliveries starts tracking frames on readers, printing the counters
// of d, the daemon that delivers them, when a check fails.
func newDeliveries(t *testing.T, d *daemon, readers ...*packetReader) *deliveries {
	dl := &deliveries{t: t, want: make(map[*packetReader][][]byte), labels: make(map[*packetReader][]string), daemon: d}
	for _, r := range readers {
		dl.watch(r)
	}
	return dl
}

func (d *deliveries) watch(r *packetReader) {
	if _, ok := d.want[r]; !ok {
		d.order = append(d.order, r)
		d.want[r] = nil
	}
}

// expect adds frame to what r must receive next.
func (d *deliveries) expect(r *packetReader, frame []byte, label string) {
	d.watch(r)
	d.want[r] = append(d.want[r], frame)
	d.labels[r] = append(d.labels[r], label)
}

// describeOnly records a frame that must come out nowhere, for messages.
func (d *deliveries) describeOnly(frame []byte, label string) {
	d.nowhere = append(d.nowhere, frame)
	d.nowhereLabel = append(d.nowhereLabel, label)
}

// wait waits until every reader has at least the frames expected so far;
// it reports false (without failing) when one has not after frameTimeout.
func (d *deliveries) wait() bool {
	for _, r := range d.order {
		if !r.waitIn(len(d.want[r])) {
			return false
		}
	}
	return true
}

// check waits for every expected frame, keeps listening for settleTime, and
// fails the test unless each reader received exactly its expected frames,
// byte for byte and in order; it reports whether they did.
func (d *deliveries) check() bool {
	d.t.Helper()
	start := time.Now()
	complete := d.wait()
	if took := time.Since(start); took > time.Second {
		// Not a failure (a loaded machine is slow), but worth knowing.
		d.t.Logf("the frames took %v to arrive (all there: %v)", took.Round(time.Millisecond), complete)
	}
	time.Sleep(settleTime)
	ok := true
	for _, r := range d.order {
		got, want := r.received(), d.want[r]
		if slices.EqualFunc(got, want, bytes.Equal) {
			continue
		}
		ok = false
		var b strings.Builder
		fmt.Fprintf(&b, "%s received %d frames, want %d:\n", r.name, len(got), len(want))
		for i := 0; i < max(len(got), len(want)); i++ {
			switch {
			case i >= len(got):
				fmt.Fprintf(&b, "  #%d missing: %s\n", i, d.labels[r][i])
			case i >= len(want):
				fmt.Fprintf(&b, "  #%d extra: %s\n", i, d.describe(got[i]))
			case !bytes.Equal(got[i], want[i]):
				fmt.Fprintf(&b, "  #%d got %s\n      want %s\n%s", i, d.describe(got[i]), d.labels[r][i], hexDiff(got[i], want[i]))
			default:
				fmt.Fprintf(&b, "  #%d ok: %s\n", i, d.labels[r][i])
			}
		}
		d.t.Error(b.String())
	}
	if d.t.Failed() {
		d.t.Logf("erspanctl -j:\n%s", d.daemon.ctl("-j").stdout)
	}
	return ok
}

// describe names a received frame by the expected frame it equals, where
// ever that was expected.
func (d *deliveries) describe(f []byte) string {
	for _, r := range d.order {
		for i, w := range d.want[r] {
			if bytes.Equal(f, w) {
				return fmt.Sprintf("%s (expected on %s)", d.labels[r][i], r.name)
			}
		}
	}
	for i, w := range d.nowhere {
		if bytes.Equal(f, w) {
			return fmt.Sprintf("%s (must come out nowhere)", d.nowhereLabel[i])
		}
	}
	if l := frameLabel(f); l != "" {
		return fmt.Sprintf("%q (%d bytes, not expected anywhere)", l, len(f))
	}
	return fmt.Sprintf("%d bytes, not expected anywhere: % x", len(f), f[:min(len(f), 48)])
}

// hexDiff shows where two frames part.
func hexDiff(got, want []byte) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	from := i &^ 15
	return fmt.Sprintf("      lengths %d/%d, first difference at byte %d\n      got:  % x\n      want: % x\n",
		len(got), len(want), i, got[from:min(len(got), from+32)], want[from:min(len(want), from+32)])
}

// Inner frames. The EtherType is IEEE's local experimental one, which no
// protocol stack parses, so the collector's kernel ignores the frames when a
// TAP hands them on. The payload names the frame for failure messages.
const etherTypeTest = 0x88b5

var (
	innerDst = net.HardwareAddr{0x02, 0xe2, 0xe0, 0x00, 0x00, 0xbb}
	innerSrc = net.HardwareAddr{0x02, 0xe2, 0xe0, 0x00, 0x00, 0xaa}
)

const labelMark = "E2E:"

// labeledFrame is an Ethernet frame of size bytes (at least 60) carrying
// label, after the given 802.1Q/802.1ad tags, each written as TPID<<16|TCI.
func labeledFrame(label string, size int, tags ...uint32) []byte {
	f := make([]byte, 0, max(size, 60))
	f = append(f, innerDst...)
	f = append(f, innerSrc...)
	for _, tag := range tags {
		f = binary.BigEndian.AppendUint32(f, tag)
	}
	f = binary.BigEndian.AppendUint16(f, etherTypeTest)
	f = append(f, labelMark+label+"\x00"...)
	for i := 0; len(f) < max(size, 60); i++ {
		f = append(f, byte(i*7+1))
	}
	return f
}

// frameLabel is the label labeledFrame put in f, or "".
func frameLabel(f []byte) string {
	i := bytes.Index(f, []byte(labelMark))
	if i < 0 {
		return ""
	}
	l := f[i+len(labelMark):]
	if j := bytes.IndexByte(l, 0); j >= 0 {
		l = l[:j]
	}
	return string(l)
}

// encap puts GRE and ERSPAN headers, as erspan.Encode writes them for p, in
// front of frame.
func encap(t *testing.T, p erspan.Packet, frame []byte) []byte {
	t.Helper()
	hdr := make([]byte, 64)
	n, err := erspan.Encode(hdr, &p)
	if err != nil {
		t.Fatalf("erspan.Encode(%+v): %v", p, err)
	}
	return append(hdr[:n:n], frame...)
}

// Shorthands for the packets tests send most.
func typeI() erspan.Packet { return erspan.Packet{Type: erspan.TypeI} }

func typeII(session uint16) erspan.Packet {
	return erspan.Packet{Type: erspan.TypeII, HasSeq: true, Session: session}
}

func typeIII(session uint16, seq, platform bool) erspan.Packet {
	return erspan.Packet{Type: erspan.TypeIII, HasSeq: seq, Session: session, HasPlatform: platform, PlatformID: 3}
}
