//go:build unix

package tcp

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/tlsconf"
)

// selfSigned makes a self-signed certificate for 127.0.0.1 and
// "logstash.test", good for servers and clients, and writes it and its key
// as PEM files in dir.
func selfSigned(t testing.TB, dir, name string) (cert tls.Certificate, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"logstash.test"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert, certFile, keyFile
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	serverCert, caFile, _ := selfSigned(t, dir, "server")
	clientCert, clientFile, clientKey := selfSigned(t, dir, "client")
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(clientCert.Leaf)
	// The server asks for a client certificate; its first connection
	// reads one batch and closes (close_notify, then FIN).
	closed := make(chan struct{})
	p := startPeer(t, peerOptions{
		tls: &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs},
		handle: func(i int, c net.Conn, got func(string)) {
			if i > 0 {
				readAll(i, c, got)
				return
			}
			sc := bufio.NewScanner(c)
			for n := 0; n < 3 && sc.Scan(); n++ {
				got(sc.Text())
			}
			c.Close()
			close(closed)
		},
	})
	s := newSink(t, Config{Address: p.addr, TLS: &tlsconf.Config{CAFile: caFile, CertFile: clientFile, KeyFile: clientKey}})
	ctx := context.Background()
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, records(0, 3)); err != nil {
		t.Fatal(err)
	}
	<-closed
	time.Sleep(50 * time.Millisecond)
	if err := s.Write(ctx, records(3, 3)); err != nil {
		t.Fatal(err)
	}
	p.waitFor(5*time.Second, func(l []string) bool { return len(l) >= 6 })
	conns := p.connLines()
	if len(conns) != 2 || !reflect.DeepEqual(lineIDs(t, append(conns[0], conns[1]...)), recordIDs(records(0, 6))) {
		t.Fatalf("lines per connection: %q", conns)
	}

	// By name, with server_name.
	s = newSink(t, Config{Address: p.addr, TLS: &tlsconf.Config{CAFile: caFile, CertFile: clientFile, KeyFile: clientKey, ServerName: "logstash.test"}})
	if err := s.Write(ctx, records(6, 1)); err != nil {
		t.Fatal(err)
	}

	// A server whose certificate does not verify: a permanent error at Open.
	_, otherCA, _ := selfSigned(t, dir, "other")
	s = newSink(t, Config{Address: p.addr, TLS: &tlsconf.Config{CAFile: otherCA, CertFile: clientFile, KeyFile: clientKey}})
	err := s.Open(ctx)
	var cve *tls.CertificateVerificationError
	if !engine.IsPermanent(err) || !errors.As(err, &cve) {
		t.Fatalf("Open with the wrong CA = %v, want a permanent certificate error", err)
	}
	// Also with the wrong name.
	s = newSink(t, Config{Address: p.addr, TLS: &tlsconf.Config{CAFile: caFile, CertFile: clientFile, KeyFile: clientKey, ServerName: "elsewhere.test"}})
	if err := s.Open(ctx); !engine.IsPermanent(err) {
		t.Fatalf("Open with the wrong server name = %v, want a permanent error", err)
	}
	// insecure_skip_verify accepts it.
	s = newSink(t, Config{Address: p.addr, TLS: &tlsconf.Config{CertFile: clientFile, KeyFile: clientKey, InsecureSkipVerify: true}})
	if err := s.Write(ctx, records(7, 1)); err != nil {
		t.Fatal(err)
	}
	p.waitFor(5*time.Second, func(l []string) bool { return len(l) >= 8 })
}
