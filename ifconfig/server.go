package ifconfig

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Listen opens the daemon's control socket at path: its directory is made
// 0700, the socket itself 0600 (root only, design.md). A stale socket left
// by a dead daemon is replaced; a live one is an error wrapping EADDRINUSE.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("another erspand answers on %s: %w", path, syscall.EADDRINUSE)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket: %w", err)
	}
	// The umask makes the socket 0600 from its creation: chmod after
	// bind would leave a moment in which anyone could connect.
	old := unix.Umask(0o077)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}

// shutdownWriteGrace is how long ServeListener, once its listener is
// closed, lets a handler's write of a reply take.
const shutdownWriteGrace = time.Second

// graceConn is a control connection whose writes, once closing is set,
// each get shutdownWriteGrace: from the write, not from the close, so
// that the reply to a request still being applied when the listener
// closed (a destroy that takes seconds) is not cut short, while a client
// that stopped reading holds a write no longer than the grace.
type graceConn struct {
	net.Conn
	closing *atomic.Bool
}

func (c graceConn) Write(b []byte) (int, error) {
	if c.closing.Load() {
		_ = c.SetWriteDeadline(time.Now().Add(shutdownWriteGrace))
	}
	return c.Conn.Write(b)
}

// ServeListener accepts connections on l and serves each on its own
// goroutine, until l is closed. It then ends every connection once its
// request in progress (if any) is answered, and returns only when every
// handler has: the caller's final state save comes after the last change.
func (r *Registry) ServeListener(l net.Listener, logf func(string, ...any)) error {
	var (
		mu      sync.Mutex
		conns   = map[net.Conn]bool{}
		wg      sync.WaitGroup
		closing atomic.Bool
	)
	defer func() {
		mu.Lock()
		closing.Store(true)
		for c := range conns {
			// A read deadline in the past: the handler's next read of a
			// request fails at once; a request being applied is not cut.
			// A write deadline a moment away, for a write under way; a
			// later one gets its own (graceConn): a reply to a client
			// that stopped reading must not hold the shutdown (and the
			// final state save) for ever.
			_ = c.SetReadDeadline(time.Now())
			_ = c.SetWriteDeadline(time.Now().Add(shutdownWriteGrace))
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			if err := r.Serve(graceConn{c, &closing}); err != nil && logf != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				logf("control connection: %v", err)
			}
		}()
	}
}
