//go:build unix

package tcp

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/dimagi/ptop/builtins/couchdb"
	"github.com/dimagi/ptop/engine"
)

// loadSink writes a pillow in dir whose tcp sink block is sink (indented
// under `tcp:`, from line 6, column 7) and loads it.
func loadSink(t *testing.T, dir, sink string) (*engine.Spec, string, error) {
	t.Helper()
	path := filepath.Join(dir, "p.yaml")
	var b strings.Builder
	b.WriteString("name: p\nsource:\n  couchdb: {url: \"http://127.0.0.1:1\", db: x}\nsinks:\n  - tcp:\n")
	for _, l := range strings.Split(strings.TrimSpace(sink), "\n") {
		b.WriteString("      " + l + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := engine.LoadFile(path)
	return spec, path, err
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	// Files for the tls block, relative to the pillow file.
	_, certFile, keyFile := selfSigned(t, dir, "cert")
	if err := os.WriteFile(filepath.Join(dir, "junk.pem"), []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Base(certFile), filepath.Base(keyFile)
	const usage = "use host:port, such as 127.0.0.1:5000"
	tests := []struct {
		name, sink string
		want       []string // "line:col: message", in order
	}{
		{
			"address without port", "address: localhost",
			[]string{`6:16: invalid address "localhost": missing port; ` + usage},
		},
		{
			"address with empty port", "address: \"localhost:\"",
			[]string{`6:16: invalid address "localhost:": missing port; ` + usage},
		},
		{
			"missing address", "write_timeout: 1s",
			[]string{`6:7: missing required key "address"`},
		},
		{
			"empty host", "address: \":5000\"",
			[]string{`6:16: invalid address ":5000": no host; ` + usage},
		},
		{
			"port zero", "address: h:0",
			[]string{`6:16: invalid address "h:0": port 0 is out of range 1-65535`},
		},
		{
			"port too big", "address: h:70000",
			[]string{`6:16: invalid address "h:70000": port 70000 is out of range 1-65535`},
		},
		{
			"unknown service", "address: h:no-such-service",
			[]string{`6:16: invalid address "h:no-such-service": unknown port "no-such-service": use a number or a service name`},
		},
		{
			"bare IPv6", "address: \"::1:5000\"",
			[]string{`6:16: invalid address "::1:5000": too many colons in address; ` + usage + ` or [::1]:5000`},
		},
		{
			"tls file missing", "address: h:5000\ntls:\n  ca_file: nope.pem",
			[]string{`8:18: ca_file "nope.pem": no such file or directory`},
		},
		{
			"tls files missing", "address: h:5000\ntls: {cert_file: /nope/c.pem, key_file: k.pem}",
			[]string{`7:24: cert_file "/nope/c.pem": no such file or directory`, `7:47: key_file "k.pem": no such file or directory`},
		},
		{
			"ca not PEM", "address: h:5000\ntls: {ca_file: junk.pem}",
			[]string{`7:22: ca_file "junk.pem": no PEM certificate in it`},
		},
		{
			"cert without key", "address: h:5000\ntls: {cert_file: " + cert + "}",
			[]string{`7:24: cert_file needs key_file, the certificate's private key`},
		},
		{
			"key without cert", "address: h:5000\ntls: {key_file: " + key + "}",
			[]string{`7:23: key_file needs cert_file, the certificate it is the key of`},
		},
		{
			"key not matching", "address: h:5000\ntls: {cert_file: " + cert + ", key_file: junk.pem}",
			[]string{`7:24: cert_file "cert.pem" with key_file "junk.pem": tls: failed to find any PEM data in key input`},
		},
		{
			"empty ca_file", "address: h:5000\ntls: {ca_file: \"\"}",
			[]string{`7:22: ca_file must not be empty`},
		},
		{
			"unknown tls key", "address: h:5000\ntls: {ca: x}",
			[]string{`7:13: unknown key "ca" (known keys: ca_file, cert_file, insecure_skip_verify, key_file, server_name)`},
		},
		{
			"negative write_timeout", "address: h:5000\nwrite_timeout: -1s",
			[]string{`7:22: write_timeout must be positive, got -1s`},
		},
		{
			"zero dial_timeout", "address: h:5000\ndial_timeout: 0s",
			[]string{`7:21: dial_timeout must be positive, got 0s`},
		},
		{
			"bad duration", "address: h:5000\nwrite_timeout: soon",
			[]string{`7:22: invalid duration "soon": use a number with a unit, such as "500ms" or "10s"`},
		},
		{
			"unknown key", "address: h:5000\nadress: h:5000",
			[]string{`7:7: unknown key "adress" (did you mean "address"?)`},
		},
		{"several", "address: h\nwrite_timeout: -1s\ntls:\n  ca_file: nope.pem", []string{
			`6:16: invalid address "h": missing port; ` + usage,
			`7:22: write_timeout must be positive, got -1s`,
			`9:18: ca_file "nope.pem": no such file or directory`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, path, err := loadSink(t, dir, tt.sink)
			if err == nil {
				t.Fatal("loaded without error")
			}
			want := path + ":" + strings.Join(tt.want, "\n"+path+":")
			if err.Error() != want {
				t.Fatalf("errors:\n%s\nwant:\n%s", err, want)
			}
		})
	}
}

func TestConfigValid(t *testing.T) {
	dir := t.TempDir()
	_, certFile, keyFile := selfSigned(t, dir, "cert")
	t.Setenv("TEST_TCP_ADDRESS", "logstash.test:5000")
	for _, sink := range []string{
		"address: 127.0.0.1:5000",
		"address: \"[::1]:5000\"",
		"address: logstash.test:http", // a service name
		"address: ${TEST_TCP_ADDRESS}\nwrite_timeout: 2s\ndial_timeout: 1",
		"address: h:5000\ntls: {}",
		"address: h:5000\ntls:\n  ca_file: " + filepath.Base(certFile) + "\n  cert_file: " + certFile + "\n  key_file: " + filepath.Base(keyFile) + "\n  server_name: x\n  insecure_skip_verify: false",
	} {
		spec, _, err := loadSink(t, dir, sink)
		if err != nil {
			t.Fatalf("%s:\n%v", sink, err)
		}
		if outs := spec.Outputs(); len(outs) != 1 || outs[0].Name != "tcp" {
			t.Fatalf("outputs %+v", outs)
		}
	}
	// Defaults.
	spec, _, err := loadSink(t, dir, "address: h:5000")
	if err != nil {
		t.Fatal(err)
	}
	s := spec.Outputs()[0].Sink.(*Sink)
	if s.cfg.WriteTimeout.D() != 10*time.Second || s.cfg.DialTimeout.D() != 5*time.Second || s.tls != nil {
		t.Fatalf("defaults: %+v", s.cfg)
	}
	spec, _, err = loadSink(t, dir, "address: h:5000\nwrite_timeout: 2s\ndial_timeout: 1\ntls: {ca_file: cert.pem}")
	if err != nil {
		t.Fatal(err)
	}
	s = spec.Outputs()[0].Sink.(*Sink)
	if s.cfg.WriteTimeout.D() != 2*time.Second || s.cfg.DialTimeout.D() != time.Second || s.tls == nil || s.tls.ServerName != "h" || s.tls.RootCAs == nil {
		t.Fatalf("config: %+v, tls %+v", s.cfg, s.tls)
	}
}
