// Package tlsconf is the `tls` block that every network source and sink
// takes, with one meaning everywhere:
//
//	tls:
//	  ca_file: ca.pem          # trust only these roots (default: the system's)
//	  cert_file: client.pem    # a client certificate, with key_file
//	  key_file: client-key.pem
//	  server_name: db.internal # the name the server's certificate must carry
//	  insecure_skip_verify: false
//
// Relative file names are taken from the pillow file's directory.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dimagi/ptop/engine"
)

// Config is a `tls` block.
type Config struct {
	// CAFile holds the PEM certificates the server's certificate must
	// chain to; they replace the system's roots, as curl --cacert does.
	CAFile string `yaml:"ca_file" doc:"PEM certificates the server's certificate must chain to, instead of the system's roots; relative to the pillow file."`
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// servers that ask for one.
	CertFile string `yaml:"cert_file" doc:"A PEM client certificate, for servers that ask for one (with key_file); relative to the pillow file."`
	KeyFile  string `yaml:"key_file" doc:"The client certificate's PEM private key; relative to the pillow file."`
	// ServerName is the name the server's certificate must carry; default:
	// the host connected to.
	ServerName string `yaml:"server_name" doc:"The name the server's certificate must carry; default the host connected to."`
	// InsecureSkipVerify accepts any server certificate. For tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify" doc:"Accept any server certificate. For tests only."`
}

// Validate implements engine.Validator: the files must exist and hold what
// they should, and a certificate needs its key.
func (c *Config) Validate(ch *engine.Check) {
	dir := filepath.Dir(ch.File())
	usable := map[string]bool{}
	for _, f := range []struct{ key, path string }{
		{"ca_file", c.CAFile}, {"cert_file", c.CertFile}, {"key_file", c.KeyFile},
	} {
		switch {
		case !ch.Has(f.key):
		case f.path == "":
			ch.Errorf(f.key, "%s must not be empty", f.key)
		default:
			if _, err := os.Stat(Resolve(dir, f.path)); err != nil {
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
		if _, err := loadCA(Resolve(dir, c.CAFile)); err != nil {
			ch.Errorf("ca_file", "ca_file %q: %v", c.CAFile, err)
		}
	}
	if usable["cert_file"] && usable["key_file"] {
		if _, err := tls.LoadX509KeyPair(Resolve(dir, c.CertFile), Resolve(dir, c.KeyFile)); err != nil {
			ch.Errorf("cert_file", "cert_file %q with key_file %q: %v", c.CertFile, c.KeyFile, err)
		}
	}
}

// Build makes the tls.Config for connections to host; relative files are
// taken from dir. A nil Config builds a default one (system roots).
func (c *Config) Build(dir, host string) (*tls.Config, error) {
	if c == nil {
		c = &Config{}
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify, //nolint:gosec // asked for in the config, documented as for tests
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	var err error
	if c.CAFile != "" {
		if cfg.RootCAs, err = loadCA(Resolve(dir, c.CAFile)); err != nil {
			return nil, fmt.Errorf("ca_file %q: %w", c.CAFile, err)
		}
	}
	if c.CertFile != "" || c.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(Resolve(dir, c.CertFile), Resolve(dir, c.KeyFile))
		if err != nil {
			return nil, fmt.Errorf("cert_file %q with key_file %q: %w", c.CertFile, c.KeyFile, err)
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

// Resolve takes a relative path from dir, the pillow file's directory.
func Resolve(dir, path string) string {
	if path == "" || filepath.IsAbs(path) {
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
