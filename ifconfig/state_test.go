package ifconfig

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stateWrites records the states Persist writes, through writeState
// (restored at the test's end), decoded from the JSON written to disk.
type stateWrites struct {
	mu     sync.Mutex
	states []State
}

// recordWrites starts a record; after, unless nil, is called after each
// write with the count so far, from Persist's goroutine.
func recordWrites(t *testing.T, after func(n int)) *stateWrites {
	w := &stateWrites{}
	orig := writeState
	t.Cleanup(func() { writeState = orig })
	writeState = func(path string, data []byte) error {
		var st State
		if err := json.Unmarshal(data, &st); err != nil {
			t.Errorf("state written is not JSON: %v", err)
		}
		w.mu.Lock()
		w.states = append(w.states, st)
		n := len(w.states)
		w.mu.Unlock()
		if after != nil {
			after(n)
		}
		return orig(path, data)
	}
	return w
}

// count is the number of writes and the number of interfaces in the
// last (-1 with none).
func (w *stateWrites) count() (int, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.states) == 0 {
		return 0, -1
	}
	return len(w.states), len(w.states[len(w.states)-1].Interfaces)
}

// last is the last state written (the zero State with none).
func (w *stateWrites) last() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.states) == 0 {
		return State{}
	}
	return w.states[len(w.states)-1]
}

// TestPersistCoalesces: a burst of configuration changes is written in a
// few writes, not one per change (each write holds every interface), and
// nothing is lost: the file after the burst, and the last one at stop,
// hold every interface.
func TestPersistCoalesces(t *testing.T) {
	w := recordWrites(t, nil)
	count := w.count
	r := NewRegistry(newFake())
	path := filepath.Join(t.TempDir(), "state")
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		r.Persist(path, &setSeq{}, stop, t.Logf)
		close(done)
	}()
	waitCount := func(what string, ok func(n, ifs int) bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if ok(count()) {
				return
			}
		}
		n, ifs := count()
		t.Fatalf("%s: %d writes, the last with %d interfaces", what, n, ifs)
	}
	waitCount("the first write, at start", func(n, _ int) bool { return n >= 1 })

	// 200 changes at least a millisecond apart: written one by one, that
	// would be about as many writes.
	const changes = 200
	n0, _ := count()
	start := time.Now()
	for i := range changes {
		if err := r.Create(fmt.Sprintf("erspan%d", i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	waitCount("after the burst", func(_, ifs int) bool { return ifs == changes })
	n1, _ := count()
	if most := int(elapsed/persistCoalesce) + 3; n1-n0 > most {
		t.Errorf("%d changes over %v were written %d times, want at most %d (one per %v)", changes, elapsed.Round(time.Millisecond), n1-n0, most, persistCoalesce)
	}

	// A change, then stop at once: the change's write, the last one at
	// stop, and no more.
	time.Sleep(2 * persistCoalesce)
	n2, _ := count()
	if err := r.Destroy("erspan7"); err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-done
	n, ifs := count()
	if ifs != changes-1 {
		t.Errorf("the write at stop (%d writes) holds %d interfaces, want %d", n, ifs, changes-1)
	}
	if n-n2 > 2 {
		t.Errorf("a change and a stop were written %d times, want at most 2", n-n2)
	}
}

// setSeq is a Sequencer whose sequence number the test sets.
type setSeq struct{ n atomic.Uint32 }

func (s *setSeq) Seq(string) uint32     { return s.n.Load() }
func (s *setSeq) SetSeq(string, uint32) {}

// TestPersistAtStop: the write at stop holds the sequence numbers as they
// are then, though no configuration changed since the last write (a
// restarted daemon resumes from them; TestRestart end to end).
func TestPersistAtStop(t *testing.T) {
	w := recordWrites(t, nil)
	r := NewRegistry(newFake())
	if err := r.Create("erspan0"); err != nil {
		t.Fatal(err)
	}
	seq := &setSeq{}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		r.Persist(filepath.Join(t.TempDir(), "state"), seq, stop, t.Logf)
		close(done)
	}()
	// The write at start, and the create's (its token was waiting); then
	// the create's quiet time passes: nothing else is due but the tick.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if n, _ := w.count(); n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			n, _ := w.count()
			t.Fatalf("%d writes, want the one at start and the create's", n)
		}
	}
	time.Sleep(2 * persistCoalesce)
	seq.n.Store(77)
	close(stop)
	<-done
	if last := w.last(); len(last.Interfaces) != 1 || last.Interfaces[0].Seq != 77 {
		t.Errorf("the last write holds %+v, want erspan0 with seq 77", last.Interfaces)
	}
}

// TestPersistStopWhileCoalescing: a stop that comes in the quiet time
// after a change's write (persistCoalesce) still writes the state as it is
// then: the sequence numbers moved since that write.
func TestPersistStopWhileCoalescing(t *testing.T) {
	seq := &setSeq{}
	stop, done := make(chan struct{}), make(chan struct{})
	w := recordWrites(t, func(n int) {
		if n == 2 {
			// The create's write: the quiet time follows it, and stop
			// comes before it ends.
			seq.n.Store(77)
			close(stop)
		}
	})
	r := NewRegistry(newFake())
	if err := r.Create("erspan0"); err != nil { // its token waits for Persist
		t.Fatal(err)
	}
	go func() {
		r.Persist(filepath.Join(t.TempDir(), "state"), seq, stop, t.Logf)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Persist did not return 5 s after the create's write")
	}
	if writes, _ := w.count(); writes != 3 || len(w.last().Interfaces) != 1 || w.last().Interfaces[0].Seq != 77 {
		t.Errorf("%d writes, the last holding %+v; want 3, the last with erspan0 at seq 77", writes, w.last().Interfaces)
	}
}
