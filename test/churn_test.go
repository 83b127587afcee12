package test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestChurnUnderTraffic: one interface is destroyed and made again, and
// taken down and up, over and over while the switch floods its session and
// another interface's: every control operation must return, erspand stay
// up, the interface left alone keep receiving throughout, and both take a
// frame afterwards. Destroying an interface closes its TAP queue, which
// waits for the receivers' batches in flight; a receiver that waited in
// turn for the control path mid-batch would deadlock a destroy only when
// one lands in a batch, so this is a smoke test by repetition (a mutant
// taking Host.mu there failed 2 runs in 5 at 10 rounds). That no frame is
// written to a closed descriptor is TestFrameWriterCloseDuringBatch's.
func TestChurnUnderTraffic(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	e := newEnv(t)
	L, R := collect4.String(), switch4.String()
	e.d.mustCtl("create", "erspan1", "tunnel", L, R, "vnetid", "1", "up")
	e.d.mustCtl("create", "erspan2", "tunnel", L, R, "vnetid", "2", "up")

	// The flood: sessions 1 and 2 in turn from one socket, paced to at
	// most ~50k packets a second (the other tests run beside this one),
	// bounded in count and time whatever happens to the churn below, and
	// ending well past it. A send the sender's kernel refuses with
	// ENOBUFS (a full backlog) is counted, not fatal: only what erspand
	// does with what arrives is under test; any other error is.
	const (
		floodMax  = 3_000_000
		floodTime = 60 * time.Second
		burst     = 256
		pause     = 5 * time.Millisecond
	)
	pkts := [][]byte{encap(t, typeII(1), labeledFrame("flood s1", 64)), encap(t, typeII(2), labeledFrame("flood s2", 64))}
	fd := e.sender.fds[switch4]
	to := &unix.SockaddrInet4{Addr: collect4.As4()}
	var stop atomic.Bool
	var sent, refused atomic.Uint64
	var sendErr error // the first error other than ENOBUFS, read after flooded
	flooded := make(chan struct{})
	go func() {
		defer close(flooded)
		deadline := time.Now().Add(floodTime)
		for i := 0; i < floodMax && !stop.Load(); i++ {
			if i%burst == 0 {
				if time.Now().After(deadline) {
					return
				}
				time.Sleep(pause)
			}
			switch err := unix.Sendto(fd, pkts[i%2], 0, to); {
			case err == nil:
				sent.Add(1)
			case errors.Is(err, unix.ENOBUFS):
				refused.Add(1)
			default:
				sendErr = err
				return
			}
		}
	}()
	endFlood := func() {
		stop.Store(true)
		<-flooded
	}
	defer endFlood()

	rx1 := func() uint64 { return e.d.status("erspan1").Counters.RxPackets }
	waitFor(t, "the flood reaching erspan1", func() bool { return rx1() > 0 })
	const rounds = 30
	for i := range rounds {
		before := rx1()
		e.d.mustCtl("destroy", "erspan2")
		e.d.mustCtl("create", "erspan2", "tunnel", L, R, "vnetid", "2", "up")
		e.d.mustCtl("erspan2", "down")
		e.d.mustCtl("erspan2", "up")
		select {
		case <-flooded:
			t.Fatalf("round %d of %d: the flood ended before the churn (sent %d, error %v)", i+1, rounds, sent.Load(), sendErr)
		default:
		}
		waitFor(t, "erspan1 receiving while erspan2 changes", func() bool { return rx1() > before })
		if !e.d.alive() {
			t.Fatalf("round %d of %d: erspand is gone; its log:\n%s", i+1, rounds, e.d.log())
		}
	}
	endFlood()
	t.Logf("flood: %d packets sent, %d refused by the sender's kernel (ENOBUFS)", sent.Load(), refused.Load())
	if sendErr != nil {
		t.Fatalf("the flood: %v", sendErr)
	}
	if sent.Load() == 0 {
		t.Fatal("the flood sent nothing")
	}

	// The flood's last frames delivered (the counters stand still), so
	// that the readers opened next see only what follows.
	rx := func() [2]uint64 { return [2]uint64{rx1(), e.d.status("erspan2").Counters.RxPackets} }
	last := rx()
	waitFor(t, "the flood's last frames delivered", func() bool {
		time.Sleep(200 * time.Millisecond)
		now := rx()
		still := now == last
		last = now
		return still
	})

	// Both interfaces still take frames, the one made again included.
	r1, r2 := e.reader("erspan1"), e.reader("erspan2")
	dl := e.deliveries(r1, r2)
	for _, c := range []struct {
		r       *packetReader
		session uint16
	}{{r1, 1}, {r2, 2}} {
		label := fmt.Sprintf("after the churn, session %d", c.session)
		f := labeledFrame(label, 80)
		e.sender.send(switch4, collect4, encap(t, typeII(c.session), f))
		dl.expect(c.r, f, label)
	}
	dl.check()
	// Idle now, and each receiver's last batch was one frame: a destroy
	// has no batch in flight to wait for (runCtl bounds it).
	e.d.mustCtl("destroy", "erspan1")
	e.d.mustCtl("destroy", "erspan2")
}
