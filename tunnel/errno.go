package tunnel

import "golang.org/x/sys/unix"

// Errnos the Host itself returns; the system calls it makes return their own.
var (
	errEEXIST = unix.EEXIST
	errENXIO  = unix.ENXIO
	errENOENT = unix.ENOENT
)
