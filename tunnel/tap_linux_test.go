package tunnel

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestRandomMACForm(t *testing.T) {
	seen := map[string]bool{}
	for range 64 {
		mac := RandomMAC()
		if len(mac) != 6 || mac[0] != 0xfe || mac[1] != 0xe1 || mac[2] != 0xba || mac[3]&0xf0 != 0xd0 {
			t.Fatalf("RandomMAC() = %s, want fe:e1:ba:dX:XX:XX", mac)
		}
		seen[mac.String()] = true
	}
	if len(seen) < 60 {
		t.Errorf("64 RandomMAC calls gave only %d distinct addresses", len(seen))
	}
}

func TestTAPCreateAdoptDelete(t *testing.T) {
	ns := newTestNetns(t)
	ns.do(t, func() {
		mac := net.HardwareAddr{0xfe, 0xe1, 0xba, 0xd1, 0x23, 0x45}
		l, adopted, err := CreateTAP("erspan7", mac, 1400)
		if err != nil {
			t.Fatalf("CreateTAP: %v", err)
		}
		if adopted || l.Name != "erspan7" || l.Index == 0 || !bytes.Equal(l.MAC, mac) || l.MTU != 1400 {
			t.Fatalf("CreateTAP = %+v adopted=%v, want erspan7 %s mtu 1400, new", l, adopted, mac)
		}
		nl, err := netlink.LinkByName("erspan7")
		if err != nil {
			t.Fatalf("the new TAP is not there: %v", err)
		}
		a := nl.Attrs()
		tt, ok := nl.(*netlink.Tuntap)
		switch {
		case !ok || tt.Mode != netlink.TUNTAP_MODE_TAP:
			t.Errorf("link is %s %+v, want a TAP", nl.Type(), nl)
		case tt.Flags&netlink.TUNTAP_MULTI_QUEUE == 0 || tt.Flags&netlink.TUNTAP_NO_PI == 0:
			t.Errorf("TAP flags %#x, want multi-queue and no-pi", tt.Flags)
		case tt.NonPersist:
			t.Errorf("TAP is not persistent")
		}
		if a.Flags&net.FlagUp != 0 {
			t.Errorf("new TAP is up")
		}
		if a.Alias != LinkAlias || !bytes.Equal(a.HardwareAddr, mac) || a.MTU != 1400 || a.Index != l.Index {
			t.Errorf("link attrs alias %q mac %s mtu %d index %d; want %q %s 1400 %d",
				a.Alias, a.HardwareAddr, a.MTU, a.Index, LinkAlias, mac, l.Index)
		}

		// Again: adopted as it is, even with other settings asked for.
		l2, adopted, err := CreateTAP("erspan7", RandomMAC(), 1500)
		if err != nil || !adopted || l2.Index != l.Index || !bytes.Equal(l2.MAC, mac) || l2.MTU != 1400 {
			t.Errorf("second CreateTAP = %+v adopted=%v err=%v, want the same link adopted", l2, adopted, err)
		}

		// A default MAC is random, of OpenBSD's form.
		l3, _, err := CreateTAP("erspan8", nil, 0)
		if err != nil {
			t.Fatalf("CreateTAP erspan8: %v", err)
		}
		if l3.MAC[0] != 0xfe || l3.MAC[3]&0xf0 != 0xd0 || l3.MTU != 1500 {
			t.Errorf("erspan8 = %+v, want a fe:e1:ba:dX MAC and mtu 1500", l3)
		}

		// Somebody else's link of that name (ip_gre's erspan0, say). There
		// is no dummy module here: a veth stands in for it. A TAP without
		// our alias is just as foreign.
		foreign := &netlink.Veth{LinkAttrs: netlink.NewLinkAttrs(), PeerName: "erspan9p"}
		foreign.Name = "erspan9"
		if err := netlink.LinkAdd(foreign); err != nil {
			t.Fatalf("add a veth link: %v", err)
		}
		tap := &netlink.Tuntap{LinkAttrs: netlink.NewLinkAttrs(), Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_MULTI_QUEUE_DEFAULTS, Queues: 1}
		tap.Name = "erspan6"
		if err := netlink.LinkAdd(tap); err != nil {
			t.Fatalf("add a foreign TAP: %v", err)
		}
		for _, f := range tap.Fds {
			f.Close()
		}
		for _, name := range []string{"erspan9", "erspan6"} {
			if _, _, err := CreateTAP(name, nil, 0); !errors.Is(err, unix.EEXIST) {
				t.Errorf("CreateTAP over foreign %s: %v, want EEXIST", name, err)
			}
			if err := DeleteTAP(name); !errors.Is(err, unix.ENXIO) {
				t.Errorf("DeleteTAP of foreign %s: %v, want ENXIO", name, err)
			}
			if _, err := netlink.LinkByName(name); err != nil {
				t.Errorf("foreign %s is gone: %v", name, err)
			}
			if _, err := OpenQueue(name); !errors.Is(err, unix.ENXIO) {
				t.Errorf("OpenQueue on foreign %s: %v, want ENXIO", name, err)
			}
		}

		if _, _, err := CreateTAP("erspan-a-very-long-name", nil, 0); !errors.Is(err, unix.EINVAL) {
			t.Errorf("CreateTAP with a 23-byte name: %v, want EINVAL", err)
		}

		for _, name := range []string{"erspan7", "erspan8"} {
			if err := DeleteTAP(name); err != nil {
				t.Fatalf("DeleteTAP %s: %v", name, err)
			}
			if _, err := netlink.LinkByName(name); err == nil {
				t.Errorf("%s still exists after DeleteTAP", name)
			}
		}
		if err := DeleteTAP("erspan7"); !errors.Is(err, unix.ENXIO) {
			t.Errorf("DeleteTAP of a missing link: %v, want ENXIO", err)
		}
		if err := SetLinkUp("erspan7", true); !errors.Is(err, unix.ENXIO) {
			t.Errorf("SetLinkUp of a missing link: %v, want ENXIO", err)
		}
		// OpenQueue must not create the TAP it is asked for.
		if _, err := OpenQueue("erspan7"); !errors.Is(err, unix.ENXIO) {
			t.Errorf("OpenQueue on a missing TAP: %v, want ENXIO", err)
		}
		if _, err := netlink.LinkByName("erspan7"); err == nil {
			t.Errorf("OpenQueue created erspan7")
		}
	})
}

// upTAP creates the TAP name in the calling thread's namespace (inside
// testNetns.do) and sets it up.
func upTAP(t *testing.T, name string) Link {
	t.Helper()
	l, _, err := CreateTAP(name, nil, 0)
	if err != nil {
		t.Fatalf("CreateTAP %s: %v", name, err)
	}
	if err := SetLinkUp(name, true); err != nil {
		t.Fatalf("SetLinkUp %s: %v", name, err)
	}
	return l
}

// writeTAP writes frame into q as receivers do (a FrameWriter, write(2)
// per frame) and returns the write's error.
func writeTAP(q Queue, frame []byte) error {
	w := (&Linux{}).NewFrameWriter(1)
	defer w.Close()
	w.Add(q, frame)
	return w.Flush()[0]
}

func TestTAPQueue(t *testing.T) {
	ns := newTestNetns(t)
	ns.do(t, func() {
		l := upTAP(t, "erspan3")
		if nl, err := netlink.LinkByName("erspan3"); err != nil || nl.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("link not up after SetLinkUp: %v", err)
		}
		q, err := OpenQueue("erspan3")
		if err != nil {
			t.Fatalf("OpenQueue: %v", err)
		}
		defer q.Close()
		// Two queues at once: the device is multi-queue.
		q2, err := OpenQueue("erspan3")
		if err != nil {
			t.Fatalf("second OpenQueue: %v", err)
		}
		if err := q2.Close(); err != nil {
			t.Errorf("close the second queue: %v", err)
		}
		// Persist stayed on: the TAP outlives its queues.
		if _, err := netlink.LinkByName("erspan3"); err != nil {
			t.Fatalf("TAP gone after closing a queue: %v", err)
		}

		stats := func() (uint64, uint64) {
			nl, err := netlink.LinkByName("erspan3")
			if err != nil {
				t.Fatalf("LinkByName: %v", err)
			}
			s := nl.Attrs().Statistics
			return s.RxPackets, s.RxBytes
		}
		p0, b0 := stats()
		frame := fakeFrame(7)
		copy(frame[0:6], l.MAC)
		for range 3 {
			if err := writeTAP(q, frame); err != nil {
				t.Fatalf("write: %v", err)
			}
		}
		p1, b1 := stats()
		if p1-p0 != 3 || b1-b0 != 3*uint64(len(frame)) {
			t.Errorf("rx counters went from %d/%d to %d/%d, want +3 packets +%d bytes", p0, b0, p1, b1, 3*len(frame))
		}

		// A ReadBatch waiting for a frame returns once the queue closes.
		q3, err := OpenQueue("erspan3")
		if err != nil {
			t.Fatalf("third OpenQueue: %v", err)
		}
		if err := SetLinkUp("erspan3", false); err != nil { // no IPv6 chatter to read
			t.Fatalf("SetLinkUp down: %v", err)
		}
		buf := make([]byte, 2048)
		var size [1]int
		checkCloseUnblocks(t, "ReadBatch", 0, func() error {
			_, err := q3.ReadBatch([][]byte{buf}, size[:], 0)
			return err
		}, q3.Close, os.ErrClosed)
		if err := writeTAP(q3, frame); !errors.Is(err, os.ErrClosed) {
			t.Errorf("write after Close: %v, want os.ErrClosed", err)
		}
		if err := DeleteTAP("erspan3"); err != nil {
			t.Errorf("DeleteTAP with a queue open: %v", err)
		}
	})
}

// TestTAPQueueWait: a ReadBatch waiting on an empty queue (armed in
// tapWaits, outside the netpoller) stays waiting while nothing leaves the
// TAP, wakes for the next frame, and takes a burst whole and in order,
// also on a second queue after the first closed, and with a stale wake-up
// pending (left by an event for a closed queue whose descriptor number
// was reused), which must cost nothing but a re-read.
func TestTAPQueueWait(t *testing.T) {
	ns := newTestNetns(t)
	ns.do(t, func() {
		l := upTAP(t, "erspan4")
		// Frames sent on the TAP by a packet socket leave it: they are
		// what the queue reads.
		ps, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("AF_PACKET socket: %v", err)
		}
		defer unix.Close(ps)
		to := &unix.SockaddrLinklayer{Ifindex: l.Index, Halen: 6}
		send := func(tag byte) []byte {
			f := fakeFrame(tag)
			if err := unix.Sendto(ps, f, 0, to); err != nil {
				t.Fatalf("send on erspan4: %v", err)
			}
			return f
		}
		const burst = 40
		type result struct {
			frames [][]byte
			err    error
		}
		// read runs ReadBatch once in the background.
		read := func(q Queue) chan result {
			c := make(chan result, 1)
			go func() {
				bufs, sizes := make([][]byte, burst), make([]int, burst)
				for i := range bufs {
					bufs[i] = make([]byte, 2048)
				}
				n, err := q.ReadBatch(bufs, sizes, 16)
				var r result
				for i := range n {
					r.frames = append(r.frames, bufs[i][16:16+sizes[i]])
				}
				r.err = err
				c <- r
			}()
			return c
		}
		// IPv6 on the TAP sends router solicitations and the like:
		// only frames with our tag count.
		ours := func(fs [][]byte) (out [][]byte) {
			for _, f := range fs {
				if len(f) == 60 && f[12] == 0x88 && f[13] == 0xb5 {
					out = append(out, f)
				}
			}
			return out
		}
		for round, name := range []string{"first queue", "queue with a stale wake-up"} {
			q, err := OpenQueue("erspan4")
			if err != nil {
				t.Fatalf("%s: OpenQueue: %v", name, err)
			}
			defer q.Close() // on failure; closed below otherwise
			if round == 1 {
				// What an event for a closed queue whose descriptor
				// number this one got leaves behind.
				q.(*tapQueue).ready <- struct{}{}
			}
			// Three times: wait on an empty queue, then one frame. The
			// second and third waits need the queue re-armed.
			var want, got [][]byte
			deadline := time.After(2 * time.Second)
			for i := range 3 {
				c := read(q)
				select {
				case r := <-c:
					// Only the kernel's own chatter may wake it, and
					// a return with nothing is a wait that did not
					// wait.
					if len(ours(r.frames)) != 0 || r.err != nil || len(r.frames) == 0 {
						t.Fatalf("%s: ReadBatch returned %d frames (%v) before any was sent", name, len(r.frames), r.err)
					}
					got = append(got, r.frames...)
					c = read(q)
				case <-time.After(100 * time.Millisecond):
				}
				want = append(want, send(byte(10*round+i)))
				for len(ours(got)) < i+1 {
					select {
					case r := <-c:
						if r.err != nil || len(r.frames) == 0 {
							t.Fatalf("%s: ReadBatch: %d frames, %v", name, len(r.frames), r.err)
						}
						got = append(got, r.frames...)
						if len(ours(got)) < i+1 {
							c = read(q)
						}
					case <-deadline:
						t.Fatalf("%s: waiting ReadBatch %d did not wake for a frame", name, i+1)
					}
				}
			}
			// A burst sent while nobody reads: one ReadBatch takes
			// what is queued, the next ones the rest; all of it, in
			// order.
			for i := range burst - 3 {
				want = append(want, send(byte(10*round+3+i)))
			}
			for len(ours(got)) < burst {
				select {
				case r := <-read(q):
					if r.err != nil {
						t.Fatalf("%s: ReadBatch: %v", name, r.err)
					}
					got = append(got, r.frames...)
				case <-deadline:
					t.Fatalf("%s: %d of %d frames read", name, len(ours(got)), burst)
				}
			}
			for i, f := range ours(got) {
				if !bytes.Equal(f, want[i]) {
					t.Fatalf("%s: frame %d is % x, want % x", name, i, f, want[i])
				}
			}
			if err := q.Close(); err != nil {
				t.Fatalf("%s: Close: %v", name, err)
			}
		}
	})
}

// TestTAPQdisc: an erspanN's root qdisc is noqueue, never the kernel's
// mq with a default qdisc for each of a multi-queue TAP's 256 transmit
// queues (6.7 MB of kernel memory per interface, setNoQueue): on a new
// TAP, after up, on a TAP adopted with the default, and after a move to
// another namespace (which resets the root). A qdisc somebody chose is
// kept.
func TestTAPQdisc(t *testing.T) {
	a, b := newTestNetns(t), newTestNetns(t)
	root := func(what string) (string, uint32) {
		t.Helper()
		l, err := netlink.LinkByName("erspan3")
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		kind, handle, err := qdiscAt(l, netlink.HANDLE_ROOT)
		if err != nil {
			t.Fatalf("%s: root qdisc: %v", what, err)
		}
		return kind, handle
	}
	wantNoQueue := func(what string) {
		t.Helper()
		if kind, _ := root(what); kind != "noqueue" {
			t.Errorf("%s: root qdisc %q, want noqueue", what, kind)
		}
	}
	a.do(t, func() {
		if _, _, err := CreateTAP("erspan3", nil, 0); err != nil {
			t.Fatalf("CreateTAP: %v", err)
		}
		wantNoQueue("new TAP")
		if err := SetLinkUp("erspan3", true); err != nil {
			t.Fatal(err)
		}
		wantNoQueue("after up")

		// Deleting the root of an up link makes the kernel attach its
		// default again: mq, handle 0, as an older erspand left it.
		l, _ := netlink.LinkByName("erspan3")
		if err := netlink.QdiscDel(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_ROOT}, QdiscType: "noqueue"}); err != nil {
			t.Fatalf("delete the root qdisc: %v", err)
		}
		if kind, handle := root("default"); kind != "mq" || handle != 0 {
			t.Fatalf("after deleting the root: %q handle %#x, want the kernel's default mq 0:", kind, handle)
		}
		if _, adopted, err := CreateTAP("erspan3", nil, 0); err != nil || !adopted {
			t.Fatalf("adopt: adopted=%v err=%v", adopted, err)
		}
		wantNoQueue("adopted with the default")

		// An administrator's choice stays, even mq when it is somebody's
		// (tc gives a qdisc it adds a handle).
		for _, mine := range []struct {
			kind  string
			major uint16
		}{{"pfifo_fast", 1}, {"mq", 2}} {
			q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index,
				Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(mine.major, 0)}, QdiscType: mine.kind}
			if err := netlink.QdiscReplace(q); err != nil {
				t.Fatalf("set %s %d: as root: %v", mine.kind, mine.major, err)
			}
			if _, _, err := CreateTAP("erspan3", nil, 0); err != nil {
				t.Fatalf("adopt: %v", err)
			}
			if kind, handle := root("adopted with " + mine.kind); kind != mine.kind || handle != netlink.MakeHandle(mine.major, 0) {
				t.Errorf("adopted with %s %d: as root: now %q %#x", mine.kind, mine.major, kind, handle)
			}
		}
	})

	l := &Linux{home: a.h}
	if _, err := l.MoveTAP("erspan3", a.name, b.name); err != nil {
		t.Fatalf("MoveTAP: %v", err)
	}
	b.do(t, func() {
		wantNoQueue("moved")
		if err := SetLinkUp("erspan3", true); err != nil {
			t.Fatal(err)
		}
		wantNoQueue("moved, up")
	})
}
