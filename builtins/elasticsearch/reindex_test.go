//go:build unix

package elasticsearch

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// Reindex support against the real servers: writes through the alias,
// RebuildTarget and Promote.

// strictMappingB is strictMapping with one more field: another hash.
const strictMappingB = `{
  "dynamic": "strict",
  "properties": {
    "name":  {"type": "keyword"},
    "age":   {"type": "long"},
    "email": {"type": "keyword"}
  }
}`

func indexExists(t *testing.T, srv *testenv.OpenSearch, index string) bool {
	t.Helper()
	status, body := srv.Do(t, http.MethodHead, "/"+index, nil)
	if status != http.StatusOK && status != http.StatusNotFound {
		t.Fatalf("HEAD %s: HTTP %d: %s", index, status, body)
	}
	return status == http.StatusOK
}

func mustFound(t *testing.T, srv *testenv.OpenSearch, index, id string) {
	t.Helper()
	if _, _, found := srv.GetDoc(t, index, id); !found {
		t.Errorf("%s not in %s", id, index)
	}
}

// The live sink writes through the alias: it follows a flip, and a
// missing alias is an error, not a new index with dynamic mappings.
func TestWritesGoThroughAlias(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		dir := t.TempDir()
		alias := uniqueIndex(t)
		cfg := Config{URL: srv.URL, Index: alias, MappingFile: writeFile(t, dir, "m.json", strictMapping)}
		s := openTestSink(t, cfg, dir)
		first := s.Index()
		mustWrite(t, s, idx("a", "1-a", map[string]any{"name": "a"}))
		mustFound(t, srv, first, "a")

		// Someone points the alias at another index: writes follow.
		other := alias + "-other"
		if status, body := srv.Do(t, http.MethodPut, "/"+other, nil); status != http.StatusOK {
			t.Fatalf("create %s: HTTP %d: %s", other, status, body)
		}
		flip := fmt.Sprintf(`{"actions":[{"remove":{"index":%q,"alias":%q}},{"add":{"index":%q,"alias":%q}}]}`, first, alias, other, alias)
		if status, body := srv.Do(t, http.MethodPost, "/_aliases", flip); status != http.StatusOK {
			t.Fatalf("flip: HTTP %d: %s", status, body)
		}
		mustWrite(t, s, idx("b", "1-b", map[string]any{"name": "b"}))
		mustFound(t, srv, other, "b")
		if _, _, found := srv.GetDoc(t, first, "b"); found {
			t.Error("b written into the index the alias left")
		}
		// A sink opened now refuses: the alias is on an index of no
		// mapping of its.
		if err := newTestSink(t, cfg, dir).Open(testCtx(t)); err == nil || !engine.IsPermanent(err) || !strings.Contains(err.Error(), "mapping changed") {
			t.Fatalf("Open with the alias elsewhere: %v", err)
		}

		// On two indexes, Open refuses: writes through it would fail.
		both := fmt.Sprintf(`{"actions":[{"add":{"index":%q,"alias":%q}}]}`, first, alias)
		if status, body := srv.Do(t, http.MethodPost, "/_aliases", both); status != http.StatusOK {
			t.Fatalf("alias on both: HTTP %d: %s", status, body)
		}
		err := newTestSink(t, cfg, dir).Open(testCtx(t))
		if err == nil || !engine.IsPermanent(err) || !strings.Contains(err.Error(), "points at several indexes") {
			t.Fatalf("Open with the alias on two indexes: %v", err)
		}

		// No alias at all: the batch fails as a whole, and no index of
		// the alias's name appears.
		if status, body := srv.Do(t, http.MethodDelete, "/"+other+","+first+"/_alias/"+alias, nil); status != http.StatusOK {
			t.Fatalf("remove alias: HTTP %d: %s", status, body)
		}
		err = s.Write(testCtx(t), []engine.Record{idx("c", "1-c", map[string]any{"name": "c"})})
		var re engine.RecordErrors
		if err == nil || errors.As(err, &re) || !strings.Contains(err.Error(), "index_not_found_exception") {
			t.Fatalf("Write without the alias: %v, want a plain index_not_found_exception", err)
		}
		if indexExists(t, srv, alias) {
			t.Fatalf("a write without the alias created the index %s", alias)
		}
	})
}

// A reindex for a changed mapping: the rebuilt index is built beside the
// live one, the flip sends the live pillow's writes (still the old
// definition) into it, and only the new definition opens afterwards.
func TestReindexChangedMapping(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		for _, keepOld := range []bool{false, true} {
			t.Run(fmt.Sprintf("keepOld=%v", keepOld), func(t *testing.T) {
				dir := t.TempDir()
				alias := uniqueIndex(t)
				cfgA := Config{URL: srv.URL, Index: alias, MappingFile: writeFile(t, dir, "a.json", strictMapping)}
				cfgB := cfgA
				cfgB.MappingFile = writeFile(t, dir, "b.json", strictMappingB)

				live := openTestSink(t, cfgA, dir)
				indexA := live.Index()
				mustWrite(t, live,
					idx("1", "1-a", map[string]any{"name": "one"}),
					idx("2", "2-b", map[string]any{"name": "two"}))

				// The new definition: refused by Open, rebuilt by a reindex.
				re := newTestSink(t, cfgB, dir)
				indexB := re.Index()
				if indexB == indexA {
					t.Fatal("the mappings have the same hash")
				}
				if err := re.Open(testCtx(t)); err == nil || !engine.IsPermanent(err) {
					t.Fatalf("Open of the new mapping before the reindex: %v", err)
				}
				target, _, err := re.RebuildTarget(testCtx(t), false)
				if err != nil {
					t.Fatal(err)
				}
				ts := target.(*Sink)
				if ts.Index() != indexB {
					t.Fatalf("target %s, want %s", ts.Index(), indexB)
				}
				if !indexExists(t, srv, indexB) {
					t.Fatalf("RebuildTarget did not create %s", indexB)
				}
				if err := ts.Open(testCtx(t)); err != nil {
					t.Fatal(err)
				}
				mustWrite(t, ts,
					idx("1", "1-a", map[string]any{"name": "one", "email": "1@x"}),
					idx("2", "2-b", map[string]any{"name": "two", "email": "2@x"}))
				// A record the new mapping rejects is the record's error,
				// as in any Write.
				err = ts.Write(testCtx(t), []engine.Record{idx("bad", "1-x", map[string]any{"age": "old"})})
				var rerrs engine.RecordErrors
				if !errors.As(err, &rerrs) || len(rerrs) != 1 {
					t.Fatalf("a rejected record: %v", err)
				}
				// Meanwhile the live pillow writes on into A.
				mustWrite(t, live, idx("3", "1-c", map[string]any{"name": "three"}))
				mustFound(t, srv, indexA, "3")
				if got := aliasTargets(t, srv, alias); len(got) != 1 || got[0] != indexA {
					t.Fatalf("before Promote the alias points at %v", got)
				}
				ts.Close()

				// A resumed reindex (another process) chooses the same index.
				again, _, err := newTestSink(t, cfgB, dir).RebuildTarget(testCtx(t), false)
				if err != nil {
					t.Fatal(err)
				}
				if again.(*Sink).Index() != indexB {
					t.Fatalf("resumed target %s, want %s", again.(*Sink).Index(), indexB)
				}

				desc, err := re.Promote(testCtx(t), keepOld)
				if err != nil {
					t.Fatal(err)
				}
				want := "alias " + alias + " now points at " + indexB + " (was " + indexA + ", deleted)"
				if keepOld {
					want = "alias " + alias + " now points at " + indexB + " (was " + indexA + ", kept read-only)"
				}
				if desc != want {
					t.Errorf("Promote: %q, want %q", desc, want)
				}
				if got := aliasTargets(t, srv, alias); len(got) != 1 || got[0] != indexB {
					t.Fatalf("after Promote the alias points at %v", got)
				}
				if indexExists(t, srv, indexA) != keepOld {
					t.Errorf("old index exists: %v, want %v", !keepOld, keepOld)
				}

				// The live sink (mapping A, opened before) now writes into B.
				mustWrite(t, live, idx("3", "1-c", map[string]any{"name": "three"}))
				mustFound(t, srv, indexB, "3")
				if srv.Count(t, alias) != 3 {
					t.Errorf("count %d through the alias, want 3", srv.Count(t, alias))
				}
				// A fresh Open: mapping A refused, mapping B accepted.
				err = newTestSink(t, cfgA, dir).Open(testCtx(t))
				if err == nil || !engine.IsPermanent(err) || !strings.Contains(err.Error(), "mapping changed: alias "+alias+" points at "+indexB) {
					t.Fatalf("Open of the old mapping after Promote: %v", err)
				}
				if s := openTestSink(t, cfgB, dir); s.Index() != indexB {
					t.Fatalf("Open of the new mapping: index %s", s.Index())
				}
				// Promoting again is harmless.
				if desc, err := re.Promote(testCtx(t), keepOld); err != nil || desc != "alias "+alias+" already points at "+indexB {
					t.Errorf("second Promote: %q, %v", desc, err)
				}
				if !keepOld {
					return
				}
				// The kept index is read-only, and a reindex back to
				// mapping A does not take it for a half-built target.
				status, body := srv.Do(t, http.MethodGet, "/"+indexA+"/_settings?flat_settings=true", nil)
				if status != http.StatusOK || !strings.Contains(string(body), `"index.blocks.write":"true"`) {
					t.Errorf("kept index settings: HTTP %d: %s", status, body)
				}
				back, _, err := newTestSink(t, cfgA, dir).RebuildTarget(testCtx(t), false)
				if err != nil {
					t.Fatal(err)
				}
				if name := back.(*Sink).Index(); !regexp.MustCompile("^" + regexp.QuoteMeta(indexA) + `-r\d+$`).MatchString(name) {
					t.Errorf("reindex back to A builds %s, want %s-rN", name, indexA)
				}
			})
		}
	})
}

// A reindex with the same mapping (for a changed transform) builds
// ALIAS-HASH-rN, which a resumed reindex reuses and which Open takes for
// the definition's own index.
func TestReindexSameMapping(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		dir := t.TempDir()
		alias := uniqueIndex(t)
		cfg := Config{URL: srv.URL, Index: alias, MappingFile: writeFile(t, dir, "m.json", strictMapping)}

		// No alias yet: the target is the definition's index, and
		// Promote makes the alias.
		re := newTestSink(t, cfg, dir)
		physical := re.Index()
		target, _, err := re.RebuildTarget(testCtx(t), false)
		if err != nil {
			t.Fatal(err)
		}
		if target.(*Sink).Index() != physical {
			t.Fatalf("target %s, want %s", target.(*Sink).Index(), physical)
		}
		mustWrite(t, target.(*Sink), idx("a", "1-a", map[string]any{"name": "a"}))
		if desc, err := re.Promote(testCtx(t), false); err != nil || desc != "alias "+alias+" now points at "+physical+" (a new alias)" {
			t.Fatalf("Promote: %q, %v", desc, err)
		}

		live := openTestSink(t, cfg, dir)
		re = newTestSink(t, cfg, dir)
		target, _, err = re.RebuildTarget(testCtx(t), false)
		if err != nil {
			t.Fatal(err)
		}
		rebuilt := target.(*Sink).Index()
		if !regexp.MustCompile("^" + regexp.QuoteMeta(physical) + `-r\d+$`).MatchString(rebuilt) {
			t.Fatalf("same-mapping target %s, want %s-rN", rebuilt, physical)
		}
		if !indexExists(t, srv, rebuilt) {
			t.Fatalf("%s not created", rebuilt)
		}
		if err := target.Open(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		mustWrite(t, target.(*Sink), idx("a", "1-a", map[string]any{"name": "A"}))
		// Resumed: the same index.
		again, _, err := newTestSink(t, cfg, dir).RebuildTarget(testCtx(t), false)
		if err != nil {
			t.Fatal(err)
		}
		if again.(*Sink).Index() != rebuilt {
			t.Fatalf("resumed target %s, want %s", again.(*Sink).Index(), rebuilt)
		}
		if desc, err := re.Promote(testCtx(t), false); err != nil || desc != "alias "+alias+" now points at "+rebuilt+" (was "+physical+", deleted)" {
			t.Fatalf("Promote: %q, %v", desc, err)
		}
		mustWrite(t, live, idx("b", "1-b", map[string]any{"name": "b"}))
		mustFound(t, srv, rebuilt, "b")
		if src, _, _ := srv.GetDoc(t, alias, "a"); src["name"] != "A" {
			t.Errorf("a through the alias: %v", src)
		}
		// The same definition opens on the rebuilt index.
		if s := openTestSink(t, cfg, dir); s.Index() != rebuilt {
			t.Fatalf("Open after the same-mapping reindex: index %s, want %s", s.Index(), rebuilt)
		}
		// The next same-mapping reindex goes back to the plain name.
		next, _, err := newTestSink(t, cfg, dir).RebuildTarget(testCtx(t), false)
		if err != nil {
			t.Fatal(err)
		}
		if next.(*Sink).Index() != physical {
			t.Fatalf("next target %s, want %s", next.(*Sink).Index(), physical)
		}
	})
}

// A mapping file counts in the pillow's hash.
func TestMappingInPillowHash(t *testing.T) {
	dir := t.TempDir()
	pillow := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(pillow, []byte(`name: hashed
source:
  couchdb: {url: "http://127.0.0.1:1", db: cases}
sinks:
  - elasticsearch: {url: "http://127.0.0.1:1", index: cases, mapping_file: m.json}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	hash := func(mapping string) string {
		t.Helper()
		writeFile(t, dir, "m.json", mapping)
		s, err := engine.LoadFile(pillow)
		if err != nil {
			t.Fatal(err)
		}
		return s.Hash
	}
	a, b, a2 := hash(strictMapping), hash(strictMappingB), hash(strictMapping)
	if a == b {
		t.Errorf("the same hash %s for two mappings", a)
	}
	if a != a2 {
		t.Errorf("the same mapping hashed %s, then %s", a, a2)
	}
	// Layout does not count: the canonical form does.
	if c := hash(strings.Join(strings.Fields(strictMapping), "")); c != a {
		t.Errorf("a reformatted mapping hashed %s, want %s", c, a)
	}
}

// engine.Reindex with this sink, end to end: a live pillow runs the old
// mapping while the reindex rebuilds into the new one and flips; the live
// pillow's writes then land in the new index, and the new definition
// starts on it.
func TestReindexPillow(t *testing.T) {
	t.Parallel()
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	srv := testenv.StartOpenSearch(t)
	db, alias := uniqueIndex(t), uniqueIndex(t)
	couch.CreateDB(t, db)
	want := map[string]float64{}
	put := func(lo, hi int) {
		t.Helper()
		var docs []map[string]any
		for i := lo; i < hi; i++ {
			id := fmt.Sprintf("case-%04d", i)
			docs = append(docs, map[string]any{"_id": id, "n": i, "name": fmt.Sprintf("case %d", i)})
			want[id] = float64(i)
		}
		couch.BulkDocs(t, db, docs)
	}

	dir := t.TempDir()
	pillow := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(pillow, []byte(fmt.Sprintf(`name: %s
source:
  couchdb: {url: %q, db: %s, heartbeat: 1s}
transform: |
  function transform(doc) { return {_id: doc._id, n: doc.n, name: doc.name}; }
batch: {size: 50, wait: 50ms}
sinks:
  - elasticsearch: {url: %q, index: %s, mapping_file: m.json}
`, db, couch.URL, db, srv.URL, alias)), 0o644); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "m.json", `{"properties": {"n": {"type": "long"}, "name": {"type": "keyword"}}}`)
	put(0, 200)
	live := startPillow(t, pillow)
	waitForState(t, srv, alias, want)
	indexA := aliasTargets(t, srv, alias)[0]

	writeFile(t, dir, "m.json", `{"properties": {"n": {"type": "long"}, "name": {"type": "text"}}}`)
	spec, err := engine.LoadFile(pillow)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() {
		done <- engine.Reindex(ctx, spec, engine.ReindexOptions{Log: testLogger(t), Every: 50 * time.Millisecond})
	}()
	put(200, 300) // while the reindex starts
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	indexB := aliasTargets(t, srv, alias)
	if len(indexB) != 1 || indexB[0] == indexA || indexExists(t, srv, indexA) {
		t.Fatalf("after the reindex the alias points at %v; the old index %s exists: %v", indexB, indexA, indexExists(t, srv, indexA))
	}
	put(300, 350) // the live pillow, old definition, writes into the new index
	waitForState(t, srv, alias, want)
	live.stop(t)

	// The new definition starts on the new index.
	put(350, 360)
	next := startPillow(t, pillow)
	waitForState(t, srv, alias, want)
	next.stop(t)
}
