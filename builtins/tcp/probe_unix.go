//go:build unix

package tcp

import (
	"io"
	"syscall"
)

// check reads, without waiting, whatever the peer sent and drops it (a
// logstash tcp input sends nothing; under TLS these are session tickets
// or a close_notify, never read because nothing is read from the
// connection). It returns io.EOF when the peer has closed the connection,
// the socket's error when it broke (reset, keepalive timeout), else nil.
func (c *conn) check() error {
	var res error
	err := c.sc.Control(func(fd uintptr) {
		var buf [4096]byte
		for range 64 { // a peer that keeps talking is alive
			n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EINTR:
			case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
				return
			case err != nil:
				res = err
				return
			case n == 0:
				res = io.EOF
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return res
}
