package tunnel

import (
	"bytes"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Both FrameWriters of a Linux host, on a real TAP: every frame arrives
// whole, in order, once; a frame for a closed queue fails alone; a batch
// allocates nothing.
func TestFrameWriter(t *testing.T) {
	for _, uring := range []bool{false, true} {
		name := map[bool]string{false: "write", true: "io_uring"}[uring]
		t.Run(name, func(t *testing.T) {
			l := &Linux{URing: uring}
			if uring {
				// Skipped only where the kernel has no io_uring or
				// forbids it; any other failure to set it up fails.
				if err := l.CheckURing(); errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) {
					t.Skipf("io_uring is not available here (%v): the writer falls back to write(2)", err)
				} else if err != nil {
					t.Fatalf("io_uring: %v", err)
				}
			}
			w := l.NewFrameWriter(8)
			defer w.Close()
			tw := w.(*tapWriter)
			if got := tw.URing(); got != uring {
				t.Fatalf("URing() = %v, want %v", got, uring)
			}
			var tail0 uint32
			if uring {
				tail0 = atomic.LoadUint32(tw.ring.sqTail)
			}
			testFrameWriter(t, w)
			if uring {
				// The frames went through the ring, not write(2).
				if tw.ring == nil {
					t.Fatal("the writer gave its ring up")
				}
				if n := atomic.LoadUint32(tw.ring.sqTail) - tail0; n < 8 {
					t.Errorf("%d writes submitted on the ring, want the batch's", n)
				}
			}
		})
	}
}

func testFrameWriter(t *testing.T, w FrameWriter) {
	ns := newTestNetns(t)
	ns.do(t, func() {
		l := upTAP(t, "erspan5")
		q, err := OpenQueue("erspan5")
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		dead, err := OpenQueue("erspan5")
		if err != nil {
			t.Fatal(err)
		}
		dead.Close()
		sniff := newPacketSniffer(t, l.Index)

		frames := make([][]byte, 5)
		for i := range frames {
			frames[i] = fakeFrame(byte(0x40 + i))
			copy(frames[i][0:6], l.MAC)
		}
		for i, f := range frames {
			if i == 2 {
				if !w.Add(dead, f) {
					t.Fatal("Add refused a frame of a batch with room")
				}
				continue
			}
			w.Add(q, f)
		}
		errs := w.Flush()
		if len(errs) != len(frames) {
			t.Fatalf("Flush returned %d results for %d frames", len(errs), len(frames))
		}
		for i, err := range errs {
			switch {
			case i == 2 && !errors.Is(err, os.ErrClosed):
				t.Errorf("frame %d, closed queue: %v, want os.ErrClosed", i, err)
			case i != 2 && err != nil:
				t.Errorf("frame %d: %v", i, err)
			}
		}
		for i, f := range frames {
			if i == 2 {
				continue
			}
			got := sniff.await(2*time.Second, func(b []byte) bool { return len(b) == 60 && b[14] >= 0x40 && b[14] < 0x45 })
			if !bytes.Equal(got, f) {
				t.Fatalf("frame %d: got % x, want % x", i, got, f)
			}
		}
		if extra := sniff.await(100*time.Millisecond, func(b []byte) bool { return len(b) == 60 && b[14] >= 0x40 && b[14] < 0x45 }); extra != nil {
			t.Errorf("an extra frame arrived: % x", extra)
		}

		// A full batch refuses more.
		for range 8 {
			w.Add(q, frames[0])
		}
		if w.Add(q, frames[0]) {
			t.Error("Add took a ninth frame into a batch of 8")
		}
		w.Flush()

		allocs := testing.AllocsPerRun(100, func() {
			for _, f := range frames {
				w.Add(q, f)
			}
			for _, err := range w.Flush() {
				if err != nil {
					t.Fatal(err)
				}
			}
		})
		if allocs != 0 {
			t.Errorf("%v allocations per batch, want 0", allocs)
		}
		// Nor when writes fail: a frame shorter than an Ethernet header
		// is refused by the kernel (EINVAL), as every frame is once the
		// TAP is removed under erspand.
		short := frames[0][:4]
		allocs = testing.AllocsPerRun(100, func() {
			w.Add(q, short)
			if err := w.Flush()[0]; err == nil {
				t.Fatal("a 4-byte frame was written into a TAP")
			}
		})
		if allocs != 0 {
			t.Errorf("%v allocations per failed write, want 0", allocs)
		}
		nl, err := netlink.LinkByName("erspan5")
		if err != nil {
			t.Fatal(err)
		}
		if want := uint64(4 + 8 + 100*5 + 5); nl.Attrs().Statistics.RxPackets < want {
			t.Errorf("rx_packets %d, want at least %d", nl.Attrs().Statistics.RxPackets, want)
		}
	})
}

// TestFrameWriterCloseDuringBatch: a queue's Close waits for a batch
// that took frames for it (their descriptor number must stay the TAP's
// until they are written), without blocking that batch: a frame for the
// closing queue added meanwhile is refused at Flush (os.ErrClosed), and
// the frames added before are written. Close returns once the batch is.
func TestFrameWriterCloseDuringBatch(t *testing.T) {
	ns := newTestNetns(t)
	ns.do(t, func() {
		l := upTAP(t, "erspan5")
		a, err := OpenQueue("erspan5")
		if err != nil {
			t.Fatal(err)
		}
		b, err := OpenQueue("erspan5")
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		w := (&Linux{}).NewFrameWriter(8)
		defer w.Close()
		f := fakeFrame(1)
		copy(f[0:6], l.MAC)
		w.Add(a, f)
		w.Add(b, f)
		closed := make(chan error, 1)
		go func() { closed <- a.Close() }()
		// Close marks the queue closed, then waits for the batch; give
		// it the moment to reach that wait (shorter only weakens the
		// check, it cannot fail it).
		for deadline := time.Now().Add(2 * time.Second); !a.(*tapQueue).closed.Load(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("Close has not marked the queue closed after 2 s")
			}
		}
		time.Sleep(20 * time.Millisecond)
		added := make(chan bool, 1)
		go func() { added <- w.Add(a, f) }()
		select {
		case ok := <-added:
			if !ok {
				t.Fatal("Add refused a frame of a batch with room")
			}
		case <-time.After(2 * time.Second):
			w.Flush() // lets Close, then the blocked Add, through
			<-added
			t.Fatal("Add of a frame for a closing queue blocked behind the queue's Close")
		}
		select {
		case err := <-closed:
			t.Fatalf("Close returned (%v) while a batch held the queue", err)
		default:
		}
		for i, err := range w.Flush() {
			want := error(nil)
			if i == 2 {
				want = os.ErrClosed // added after Close began
			}
			if !errors.Is(err, want) {
				t.Errorf("frame %d: %v, want %v", i, err, want)
			}
		}
		// awaitClosed fails the test unless the Close sending on closed
		// returns nil within 2 s.
		awaitClosed := func(after string) {
			t.Helper()
			select {
			case err := <-closed:
				if err != nil {
					t.Errorf("Close %s: %v", after, err)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("Close still waiting 2 s %s", after)
			}
		}
		awaitClosed("after the batch was written")
		// A batch of one frame, written: the writer, idle now, holds
		// nothing a Close waits for.
		c, err := OpenQueue("erspan5")
		if err != nil {
			t.Fatal(err)
		}
		w.Add(c, f)
		if err := w.Flush()[0]; err != nil {
			t.Fatalf("a batch of one frame: %v", err)
		}
		go func() { closed <- c.Close() }()
		awaitClosed("after the writer's last batch, of one frame, was written")
		// A writer closed with a batch gathered drops it, unwritten,
		// and holds nothing a Close waits for either.
		d, err := OpenQueue("erspan5")
		if err != nil {
			t.Fatal(err)
		}
		w2 := (&Linux{}).NewFrameWriter(8)
		// Deferred too, so that a failure before the Close below ends
		// the test rather than leave every deferred queue Close waiting
		// on w2's batch until the package's timeout (Close twice is
		// harmless).
		defer w2.Close()
		w2.Add(d, f)
		go func() { closed <- d.Close() }()
		for deadline := time.Now().Add(2 * time.Second); !d.(*tapQueue).closed.Load(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("Close has not marked the queue closed after 2 s")
			}
		}
		time.Sleep(20 * time.Millisecond) // Close now waits for w2's batch
		w2.Close()
		awaitClosed("after a writer with a batch gathered was closed")
	})
}
