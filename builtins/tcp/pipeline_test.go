package tcp

import (
	"testing"

	_ "github.com/dimagi/ptop/builtins/couchdb"
	"github.com/dimagi/ptop/engine"
)

// The example pillow validates with this package and the couchdb source.
func TestShippedPipeline(t *testing.T) {
	t.Setenv("COUCH_URL", "http://127.0.0.1:1")
	t.Setenv("COUCH_DB", "")
	t.Setenv("TCP_ADDRESS", "") // the default
	spec, err := engine.LoadFile("../../pipelines/cases-tcp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if outs := spec.Outputs(); len(outs) != 1 || outs[0].Name != "tcp" || outs[0].Sink.(*Sink).cfg.Address != "127.0.0.1:5000" {
		t.Fatalf("outputs %+v", outs)
	}
}
