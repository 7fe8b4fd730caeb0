package tcp

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/dimagi/ptop/component"
	"github.com/dimagi/ptop/internal/tlsconf"
)

// Config is the YAML under `- tcp: …` in a pillow's sinks.
type Config struct {
	// Address is the peer's host:port ("logstash.internal:5000",
	// "[::1]:5000"); the port may be a service name ("http").
	Address string `yaml:"address" ptop:"required" doc:"The peer's host:port, e.g. logstash.internal:5000 or [::1]:5000."`
	// TLS, when set (even as `tls: {}`), wraps the connection in TLS.
	TLS *tlsconf.Config `yaml:"tls" doc:"Wrap the connection in TLS (even tls: {} does, with the system's roots)."`
	// WriteTimeout bounds the sending of one batch: writing it and, on
	// Linux, the peer's TCP acknowledging every byte of it. Default 10s.
	WriteTimeout component.Duration `yaml:"write_timeout" doc:"Longest time to send one batch, including (on Linux) the peer's TCP acknowledging every byte (default 10s)."`
	// DialTimeout bounds connecting, TLS handshake included. Default 5s.
	DialTimeout component.Duration `yaml:"dial_timeout" doc:"Longest time to connect, TLS handshake included (default 5s)."`
}

// Defaults of Config.
const (
	DefaultWriteTimeout = 10 * time.Second
	DefaultDialTimeout  = 5 * time.Second
)

// SetDefaults implements component.Defaulter.
func (c *Config) SetDefaults() {
	c.WriteTimeout = component.Duration(DefaultWriteTimeout)
	c.DialTimeout = component.Duration(DefaultDialTimeout)
}

// Validate implements component.Validator.
func (c *Config) Validate(ch component.Check) {
	if ch.Has("address") {
		if msg := checkAddress(c.Address); msg != "" {
			ch.Errorf("address", "%s", msg)
		}
	}
	if c.WriteTimeout <= 0 {
		ch.Errorf("write_timeout", "write_timeout must be positive, got %s", c.WriteTimeout)
	}
	if c.DialTimeout <= 0 {
		ch.Errorf("dial_timeout", "dial_timeout must be positive, got %s", c.DialTimeout)
	}
}

// checkAddress returns what is wrong with a host:port address, or "".
func checkAddress(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) && ae.Err == "missing port in address" {
			return fmt.Sprintf("invalid address %q: missing port; use host:port, such as 127.0.0.1:5000", addr)
		}
		msg := err.Error()
		if ae != nil {
			msg = ae.Err
		}
		return fmt.Sprintf("invalid address %q: %s; use host:port, such as 127.0.0.1:5000 or [::1]:5000", addr, msg)
	}
	if host == "" {
		return fmt.Sprintf("invalid address %q: no host; use host:port, such as 127.0.0.1:5000", addr)
	}
	if port == "" {
		return fmt.Sprintf("invalid address %q: missing port; use host:port, such as 127.0.0.1:5000", addr)
	}
	if n, err := strconv.Atoi(port); err == nil {
		if n < 1 || n > 65535 {
			return fmt.Sprintf("invalid address %q: port %d is out of range 1-65535", addr, n)
		}
		return ""
	}
	// A service name, looked up in /etc/services (and Go's own table): no
	// network involved.
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Sprintf("invalid address %q: unknown port %q: use a number or a service name", addr, port)
	}
	return ""
}
