package tcp

import (
	"syscall"
	"unsafe"
)

// unacked returns how many bytes written to the socket the peer has not
// acknowledged yet (SIOCOUTQ: sent but unacknowledged, or not sent yet).
func (c *conn) unacked() (int, error) {
	var n int32
	var errno syscall.Errno
	err := c.sc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&n)))
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
