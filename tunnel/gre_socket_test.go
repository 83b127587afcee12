package tunnel

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/erspan-linux/erspan/erspan"
)

func parseIP(t *testing.T, s string) []byte {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a.AsSlice()
}

// readN reads n messages (bounded in time) and copies them out.
func readN(t *testing.T, s *GRESocket, n int) []Message {
	t.Helper()
	var out []Message
	got := make(chan struct{})
	go func() {
		defer close(got)
		for len(out) < n {
			msgs, err := s.ReadBatch()
			if err != nil {
				return
			}
			for _, m := range msgs {
				m.GRE = append([]byte(nil), m.GRE...)
				out = append(out, m)
			}
		}
	}()
	select {
	case <-got:
	case <-time.After(3 * time.Second):
		s.Close()
		<-got
	}
	return out
}

func testGRESocket(t *testing.T, family int, local, remote string) {
	sw, col := pair(t)
	var s *GRESocket
	in(t, col, func() {
		var err error
		s, err = ListenGRE(family, 8, 2048, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
	})
	defer s.Close()
	f := frame(1, 64)
	ii := gre(t, typeII(7), f)
	i := gre(t, erspan.Packet{Type: erspan.TypeI}, f)
	iii := gre(t, erspan.Packet{Type: erspan.TypeIII, Session: 9}, f)
	teb := append([]byte{0, 0, 0x65, 0x58}, f...)   // GRE-TEB: not ERSPAN, filtered out
	ipgre := append([]byte{0, 0, 0x08, 0x00}, f...) // IPv4-in-GRE: likewise
	rawSend(t, sw, local, teb, ii, ipgre, i, iii)
	got := readN(t, s, 3)
	want := [][]byte{ii, i, iii}
	if len(got) != len(want) {
		t.Fatalf("read %d ERSPAN packets, want %d: %+v", len(got), len(want), got)
	}
	for k, m := range got {
		if m.Err != nil || m.Src.String() != remote || m.Dst.String() != local || !bytes.Equal(m.GRE, want[k]) {
			t.Errorf("message %d: err %v src %s dst %s gre % x", k, m.Err, m.Src, m.Dst, m.GRE[:8])
		}
	}
}

func TestGRESocketIPv4(t *testing.T) { testGRESocket(t, 4, "192.0.2.2", "192.0.2.1") }

func TestGRESocketIPv6(t *testing.T) { testGRESocket(t, 6, "2001:db8::2", "2001:db8::1") }
