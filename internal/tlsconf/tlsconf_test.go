package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCA writes a self-signed CA certificate and its key as PEM files in
// dir and returns their names.
func writeCA(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = "ca.pem", "ca-key.pem"
	if err := os.WriteFile(filepath.Join(dir, certFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, keyFile), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestBuild(t *testing.T) {
	dir := t.TempDir()
	ca, key := writeCA(t, dir)

	// No block: system roots, the host as server name.
	cfg, err := (*Config)(nil).Build(dir, "db.internal")
	if err != nil || cfg.RootCAs != nil || cfg.ServerName != "db.internal" || len(cfg.Certificates) != 0 {
		t.Fatalf("nil config: %+v, %v", cfg, err)
	}
	// ca_file replaces the system roots: the pool holds that one certificate.
	cfg, err = (&Config{CAFile: ca, CertFile: ca, KeyFile: key, ServerName: "other"}).Build(dir, "db.internal")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RootCAs == nil || !cfg.RootCAs.Equal(mustPool(t, filepath.Join(dir, ca))) {
		t.Error("ca_file did not replace the roots with its certificates")
	}
	if cfg.ServerName != "other" || len(cfg.Certificates) != 1 {
		t.Errorf("server name %q, %d client certificates", cfg.ServerName, len(cfg.Certificates))
	}
	// Errors name the key and never show the file's content.
	if err := os.WriteFile(filepath.Join(dir, "secret.pem"), []byte("sk_live_secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = (&Config{CAFile: "secret.pem"}).Build(dir, "h")
	if err == nil || !strings.Contains(err.Error(), `ca_file "secret.pem": no PEM certificate in it`) || strings.Contains(err.Error(), "sk_live") {
		t.Errorf("bad CA file: %v", err)
	}
	_, err = (&Config{CertFile: ca}).Build(dir, "h")
	if err == nil || !strings.Contains(err.Error(), "cert_file") {
		t.Errorf("certificate without key: %v", err)
	}
}

func mustPool(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p
}
