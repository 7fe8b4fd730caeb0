package couchdb

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
	"github.com/dimagi/ptop/internal/tlsconf"
)

// The source takes the same tls block as the sinks: a real server behind
// a TLS-terminating proxy is followed with its CA in ca_file, and refused
// without it.
func TestFeedOverTLS(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	couch.CreateDB(t, "db")
	putTyped(t, couch, "db", map[string]string{"a1": "a"})
	target, err := url.Parse(couch.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.FlushInterval = -1 // the continuous feed, row by row
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true // asked for gzip, pouchdb-server holds feed rows back
	proxy.Transport = tr
	srv := httptest.NewTLSServer(proxy)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}

	src := newTestSource(t, Config{URL: srv.URL, DB: "db", TLS: &tlsconf.Config{CAFile: ca}})
	r := startRun(t, src, "")
	if c := r.next(t); c.ID != "a1" {
		t.Fatalf("got %s, want a1", c.ID)
	}
	putTyped(t, couch, "db", map[string]string{"a2": "a"})
	if c := r.next(t); c.ID != "a2" {
		t.Fatalf("live change over TLS: got %s, want a2", c.ID)
	}

	// Without the CA the server's certificate is not trusted: the feed
	// reports why and delivers nothing.
	plain := newTestSource(t, Config{URL: srv.URL, DB: "db"})
	r2 := startRun(t, plain, "")
	r2.none(t, 500*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := plain.FeedError(); err != nil && strings.Contains(err.Error(), "certificate") {
			break
		}
		if time.Now().After(deadline) {
			_, err := plain.FeedError()
			t.Fatalf("feed error without the CA: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := http.Get(srv.URL); err == nil {
		t.Fatal("the proxy's certificate is trusted by default; the test proves nothing")
	}
}
