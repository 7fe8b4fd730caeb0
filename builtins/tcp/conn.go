package tcp

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// keepAlive makes the kernel notice a peer that vanished without closing
// (a host that died, a cable pulled) on an idle connection within about
// 30 s; the next batch then finds the socket broken and reconnects.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}

// conn is one connection to the peer.
type conn struct {
	nc  net.Conn     // what batches are written to: raw, or TLS over raw
	raw *net.TCPConn // the socket
	sc  syscall.RawConn
}

// dial connects to address within timeout, TLS handshake included when
// tlsCfg is set.
func dial(ctx context.Context, address string, timeout time.Duration, tlsCfg *tls.Config) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := net.Dialer{KeepAliveConfig: keepAlive}
	nc, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, err
	}
	raw := nc.(*net.TCPConn)
	c := &conn{nc: raw, raw: raw}
	if c.sc, err = raw.SyscallConn(); err != nil {
		_ = raw.Close()
		return nil, err
	}
	if tlsCfg != nil {
		tc := tls.Client(raw, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", address, err)
		}
		c.nc = tc
	}
	return c, nil
}

// send writes data and waits until the peer's TCP has acknowledged every
// byte of it, all within timeout. An error wrapping os.ErrDeadlineExceeded
// means the peer did not take the data in time.
func (c *conn) send(ctx context.Context, data []byte, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if err := c.nc.SetWriteDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.raw.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.nc.Write(data); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return c.waitAcked(ctx, deadline)
}

// waitAcked waits until the socket's send queue is empty: the peer's
// kernel has received (and acknowledged) everything written. Where the
// queue cannot be read (not Linux) it returns at once.
func (c *conn) waitAcked(ctx context.Context, deadline time.Time) error {
	pause := 20 * time.Microsecond
	var timer *time.Timer
	for {
		n, err := c.unacked()
		if err != nil || n == 0 {
			return err
		}
		if err := c.check(); err != nil {
			return fmt.Errorf("the connection broke with %d bytes of the batch not acknowledged by the peer: %w", n, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the peer did not acknowledge the last %d bytes of the batch in time: %w", n, os.ErrDeadlineExceeded)
		}
		if timer == nil {
			timer = time.NewTimer(pause)
			defer timer.Stop()
		} else {
			timer.Reset(pause)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		pause = min(2*pause, 5*time.Millisecond)
	}
}

// close closes the connection cleanly (a TLS close_notify first).
func (c *conn) close() error { return c.nc.Close() }

// abort drops the connection at once, discarding what is still unsent.
func (c *conn) abort() {
	_ = c.raw.SetLinger(0)
	_ = c.raw.Close()
}
