package ifconfig

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// DialOrStart connects to the daemon at path. When nothing answers and
// autostart is set, it starts erspand (found beside the running executable,
// then on PATH) detached from the terminal, logging to erspand.log beside
// the socket, and waits for it to answer (design.md, Processes).
func DialOrStart(path string, autostart bool) (*Client, error) {
	c, err := Dial(path)
	if errors.Is(err, syscall.EACCES) {
		// The socket and its directory are the daemon's user's alone
		// (Listen): starting another erspand would not help.
		return nil, fmt.Errorf("erspand's control socket %s: %w: run erspanctl as the user erspand runs as (root)", path, err)
	}
	if err == nil || !autostart || !(errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)) {
		if err != nil {
			return nil, fmt.Errorf("no erspand answers on %s (%w); start it with: erspand --socket %s", path, err, path)
		}
		return c, nil
	}
	bin, err := findDaemon()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	logPath := filepath.Join(filepath.Dir(path), "erspand.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("daemon log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--socket", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: the daemon outlives this command and its terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := Dial(path); err == nil {
			return c, nil
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("erspand exited at start (%v); see %s", err, logPath)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("erspand (pid %d) did not answer on %s within 10s; see %s", cmd.Process.Pid, path, logPath)
}

func findDaemon() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "erspand")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath("erspand")
	if err != nil {
		return "", fmt.Errorf("no erspand beside erspanctl or on PATH to start: %w", err)
	}
	return p, nil
}
