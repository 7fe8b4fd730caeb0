package tcp

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/dimagi/ptop/engine"
)

// Config is the YAML under `- tcp: …` in a pillow's sinks.
type Config struct {
	// Address is the peer's host:port ("logstash.internal:5000",
	// "[::1]:5000"); the port may be a service name ("http").
	Address string `yaml:"address" ptop:"required" doc:"The peer's host:port, e.g. logstash.internal:5000 or [::1]:5000."`
	// TLS, when set (even as `tls: {}`), wraps the connection in TLS.
	TLS *TLSConfig `yaml:"tls" doc:"Wrap the connection in TLS (even tls: {} does, with the system's roots)."`
	// WriteTimeout bounds the sending of one batch: writing it and, on
	// Linux, the peer's TCP acknowledging every byte of it. Default 10s.
	WriteTimeout engine.Duration `yaml:"write_timeout" doc:"Longest time to send one batch, including (on Linux) the peer's TCP acknowledging every byte (default 10s)."`
	// DialTimeout bounds connecting, TLS handshake included. Default 5s.
	DialTimeout engine.Duration `yaml:"dial_timeout" doc:"Longest time to connect, TLS handshake included (default 5s)."`
}

// TLSConfig is the `tls` block of Config. Relative file names are taken
// from the pillow file's directory.
type TLSConfig struct {
	// CAFile holds the PEM certificates the server's certificate must
	// chain to; default: the system's roots.
	CAFile string `yaml:"ca_file" doc:"PEM certificates the server's certificate must chain to, relative to the pillow file; default the system's roots."`
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// servers that ask for one (logstash's ssl_client_authentication).
	CertFile string `yaml:"cert_file" doc:"A PEM client certificate, for servers that ask for one; relative to the pillow file."`
	KeyFile  string `yaml:"key_file" doc:"The client certificate's PEM key; relative to the pillow file."`
	// ServerName is the name the server's certificate must carry;
	// default: the host of Address.
	ServerName string `yaml:"server_name" doc:"The name the server's certificate must carry; default the host of address."`
	// InsecureSkipVerify accepts any server certificate. For tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify" doc:"Accept any server certificate. For tests only."`
}

// Defaults of Config.
const (
	DefaultWriteTimeout = 10 * time.Second
	DefaultDialTimeout  = 5 * time.Second
)

// SetDefaults implements engine.Defaulter.
func (c *Config) SetDefaults() {
	c.WriteTimeout = engine.Duration(DefaultWriteTimeout)
	c.DialTimeout = engine.Duration(DefaultDialTimeout)
}

// Validate implements engine.Validator.
func (c *Config) Validate(ch *engine.Check) {
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

// Validate implements engine.Validator: the files must exist and hold
// what they should.
func (t *TLSConfig) Validate(ch *engine.Check) {
	dir := filepath.Dir(ch.File())
	usable := map[string]bool{} // the file exists
	for _, f := range []struct{ key, path string }{
		{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile},
	} {
		switch {
		case !ch.Has(f.key):
		case f.path == "":
			ch.Errorf(f.key, "%s must not be empty", f.key)
		default:
			if _, err := os.Stat(resolve(dir, f.path)); err != nil {
				ch.Errorf(f.key, "%s %q: %v", f.key, f.path, unwrapPathErr(err))
			} else {
				usable[f.key] = true
			}
		}
	}
	switch {
	case ch.Has("cert_file") && !ch.Has("key_file"):
		ch.Errorf("cert_file", "cert_file needs key_file, the certificate's private key")
	case ch.Has("key_file") && !ch.Has("cert_file"):
		ch.Errorf("key_file", "key_file needs cert_file, the certificate it is the key of")
	}
	if usable["ca_file"] {
		if _, err := loadCA(resolve(dir, t.CAFile)); err != nil {
			ch.Errorf("ca_file", "ca_file %q: %v", t.CAFile, err)
		}
	}
	if usable["cert_file"] && usable["key_file"] {
		if _, err := tls.LoadX509KeyPair(resolve(dir, t.CertFile), resolve(dir, t.KeyFile)); err != nil {
			ch.Errorf("cert_file", "cert_file %q with key_file %q: %v", t.CertFile, t.KeyFile, err)
		}
	}
}

// build makes the tls.Config for a connection to address; relative files
// are taken from dir.
func (t *TLSConfig) build(dir, address string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify,
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if t.CAFile != "" {
		if cfg.RootCAs, err = loadCA(resolve(dir, t.CAFile)); err != nil {
			return nil, fmt.Errorf("ca_file %q: %w", t.CAFile, err)
		}
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(resolve(dir, t.CertFile), resolve(dir, t.KeyFile))
		if err != nil {
			return nil, fmt.Errorf("cert_file %q with key_file %q: %w", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func loadCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, unwrapPathErr(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no PEM certificate in it")
	}
	return pool, nil
}

func resolve(dir, path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}

func unwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

var (
	_ engine.Defaulter = (*Config)(nil)
	_ engine.Validator = (*Config)(nil)
	_ engine.Validator = (*TLSConfig)(nil)
)
