//go:build unix

package elasticsearch

import (
	stdjson "encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/dimagi/ptop/engine"
	"github.com/dimagi/ptop/internal/testenv"
)

// Tests against real servers: OpenSearch 2 and Elasticsearch 7 and 8 (all
// of tools/opensearch/servers.txt, or those in $PTOP_SEARCH_DISTS), each
// shared by the tests of this binary.

// forEachDist runs f against each server, in parallel.
func forEachDist(t *testing.T, f func(t *testing.T, srv *testenv.OpenSearch)) {
	dists, err := testenv.SearchDists()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dists {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			f(t, testenv.StartSearch(t, testenv.SearchOptions{Dist: d}))
		})
	}
}

func mustWrite(t *testing.T, s *Sink, recs ...engine.Record) {
	t.Helper()
	if err := s.Write(testCtx(t), recs); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

func TestWriteUpdateDelete(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		index := uniqueIndex(t)
		s := openTestSink(t, Config{URL: srv.URL, Index: index}, t.TempDir())
		mustWrite(t, s,
			idx("a", "1-a", map[string]any{"_id": "a", "name": "Amina", "n": 1, "tags": []any{"x", "y"}}),
			idx("b/with slash", "1-b", map[string]any{"_id": "b/with slash", "name": "Brian \"B\" <b>", "n": 2}),
			idx("ü", "2-c", map[string]any{"name": "Üñí", "nested": map[string]any{"k": true}}),
		)
		for id, want := range map[string]string{"a": "Amina", "b/with slash": `Brian "B" <b>`, "ü": "Üñí"} {
			src, _, found := srv.GetDoc(t, index, id)
			if !found || src["name"] != want {
				t.Errorf("%s: got %v (found %v), want name %q", id, src, found, want)
			}
			if _, has := src["_id"]; has {
				t.Errorf("%s: _id kept in the document: %v", id, src)
			}
		}
		if _, v, _ := srv.GetDoc(t, index, "ü"); v != 2 {
			t.Errorf("version %d, want the position 2", v)
		}

		// An update replaces the document; a deletion removes it; a
		// delete of an id that is not there is fine.
		mustWrite(t, s,
			idx("a", "2-a", map[string]any{"_id": "a", "name": "Amina 2"}),
			del("b/with slash", "2-b"),
			del("never-there", "1-x"),
		)
		src, v, found := srv.GetDoc(t, index, "a")
		if !found || src["name"] != "Amina 2" || src["n"] != nil || v != 2 {
			t.Errorf("after update: %v version %d found %v", src, v, found)
		}
		if _, _, found := srv.GetDoc(t, index, "b/with slash"); found {
			t.Error("deleted document still there")
		}
		if n := srv.Count(t, index); n != 2 {
			t.Errorf("count %d, want 2", n)
		}
		// The same batch again (a replay) leaves the same state.
		mustWrite(t, s,
			idx("a", "2-a", map[string]any{"_id": "a", "name": "Amina 2"}),
			del("b/with slash", "2-b"),
		)
		if n := srv.Count(t, index); n != 2 {
			t.Errorf("count after replay %d, want 2", n)
		}
	})
}

func TestOlderRevisionNeverWins(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		index := uniqueIndex(t)
		s := openTestSink(t, Config{URL: srv.URL, Index: index}, t.TempDir())
		mustWrite(t, s, idx("d", "3-c", map[string]any{"v": "three"}))
		// An older revision arriving later changes nothing, and is no error.
		mustWrite(t, s, idx("d", "2-b", map[string]any{"v": "two"}))
		if src, v, _ := srv.GetDoc(t, index, "d"); src["v"] != "three" || v != 3 {
			t.Fatalf("after an older index: %v version %d", src, v)
		}
		// Nor does an older deletion.
		mustWrite(t, s, del("d", "2-b"))
		if src, _, found := srv.GetDoc(t, index, "d"); !found || src["v"] != "three" {
			t.Fatalf("after an older delete: %v found %v", src, found)
		}
		// The same generation overwrites (a replay after a transform change).
		mustWrite(t, s, idx("d", "3-c", map[string]any{"v": "three again"}))
		if src, _, _ := srv.GetDoc(t, index, "d"); src["v"] != "three again" {
			t.Fatalf("same generation: %v", src)
		}
		// A newer deletion removes it, and an older index after it does
		// not bring it back; in one batch too.
		mustWrite(t, s, del("d", "4-d"), idx("d", "3-c", map[string]any{"v": "stale"}))
		if src, _, found := srv.GetDoc(t, index, "d"); found {
			t.Fatalf("a stale revision undid a deletion: %v", src)
		}
		mustWrite(t, s, idx("d", "5-e", map[string]any{"v": "five"}))
		if src, v, _ := srv.GetDoc(t, index, "d"); src["v"] != "five" || v != 5 {
			t.Fatalf("after a newer index: %v version %d", src, v)
		}
	})
}

const strictMapping = `{
  "dynamic": "strict",
  "properties": {
    "name": {"type": "keyword"},
    "age":  {"type": "long"}
  }
}`

func TestMixedItemResults(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		dir := t.TempDir()
		index := uniqueIndex(t)
		s := openTestSink(t, Config{URL: srv.URL, Index: index, MappingFile: writeFile(t, dir, "m.json", strictMapping)}, dir)
		err := s.Write(testCtx(t), []engine.Record{
			idx("ok1", "1-a", map[string]any{"name": "a", "age": 1}),
			idx("bad", "1-b", map[string]any{"name": "b", "age": "not a number"}),
			idx("ok2", "1-c", map[string]any{"name": "c", "age": 3}),
			del("ok-missing", "1-d"),
			idx("ok3", "1-e", map[string]any{"name": "e"}),
		})
		var re engine.RecordErrors
		if !errors.As(err, &re) {
			t.Fatalf("Write returned %v, want RecordErrors", err)
		}
		if len(re) != 1 || re[0].Index != 1 {
			t.Fatalf("RecordErrors %v, want just record 1", re)
		}
		// mapper_parsing_exception, or document_parsing_exception in 8.x.
		if msg := re[0].Err.Error(); !strings.HasPrefix(msg, "HTTP 400: ") || !strings.Contains(msg, "_parsing_exception: ") ||
			!strings.Contains(msg, "failed to parse field [age] of type [long]") {
			t.Errorf("reason %q", msg)
		}
		if n := srv.Count(t, index); n != 3 {
			t.Errorf("count %d, want the 3 good records", n)
		}

		// A field the strict mapping does not know.
		err = s.Write(testCtx(t), []engine.Record{
			idx("ok4", "1-f", map[string]any{"name": "f"}),
			idx("unknown", "1-g", map[string]any{"name": "g", "colour": "red"}),
		})
		if !errors.As(err, &re) || len(re) != 1 || re[0].Index != 1 ||
			!strings.Contains(re[0].Err.Error(), "strict_dynamic_mapping_exception") {
			t.Fatalf("Write returned %v, want a strict_dynamic_mapping_exception for record 1", err)
		}
		if _, _, found := srv.GetDoc(t, index, "ok4"); !found {
			t.Error("ok4 not written")
		}
	})
}

func TestManagedIndex(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		dir := t.TempDir()
		alias := uniqueIndex(t)
		cfg := Config{
			URL: srv.URL, Index: alias, MappingFile: writeFile(t, dir, "m.json", strictMapping),
			Settings: map[string]any{"number_of_shards": 1, "number_of_replicas": 0},
		}
		s := openTestSink(t, cfg, dir)
		physical := s.Index()
		if !strings.HasPrefix(physical, alias+"-") || len(physical) != len(alias)+9 {
			t.Fatalf("physical index %q", physical)
		}
		if got := aliasTargets(t, srv, alias); len(got) != 1 || got[0] != physical {
			t.Fatalf("alias %s points at %v, want %s", alias, got, physical)
		}
		status, body := srv.Do(t, http.MethodGet, "/"+physical+"/_settings", nil)
		if status != http.StatusOK || !strings.Contains(string(body), `"number_of_replicas":"0"`) {
			t.Errorf("settings: HTTP %d: %s", status, body)
		}
		mustWrite(t, s, idx("a", "1-a", map[string]any{"_id": "a", "name": "x"}))
		// Reads go through the alias.
		if src, _, found := srv.GetDoc(t, alias, "a"); !found || src["name"] != "x" {
			t.Fatalf("through the alias: %v %v", src, found)
		}

		// Opening again (a restart) reuses the index.
		s2 := openTestSink(t, cfg, dir)
		if s2.Index() != physical {
			t.Fatalf("second open writes to %s, want %s", s2.Index(), physical)
		}
		if n := srv.Count(t, alias); n != 1 {
			t.Errorf("count %d after reopening", n)
		}

		// A changed mapping is refused, for good.
		changed := strings.Replace(strictMapping, `"long"`, `"integer"`, 1)
		cfg3 := cfg
		cfg3.MappingFile = writeFile(t, dir, "m2.json", changed)
		s3 := newTestSink(t, cfg3, dir)
		err := s3.Open(testCtx(t))
		want := "mapping changed: alias " + alias + " points at " + physical + ", mapping_file gives " + s3.Index() + "; run ptop reindex"
		if err == nil || !engine.IsPermanent(err) || err.Error() != want {
			t.Fatalf("Open with a changed mapping: %v (permanent %v), want %q", err, engine.IsPermanent(err), want)
		}
		if got := aliasTargets(t, srv, alias); len(got) != 1 || got[0] != physical {
			t.Fatalf("after the refused open the alias points at %v", got)
		}

		// An index (not an alias) in the alias's place is refused too.
		plain := uniqueIndex(t)
		if status, body := srv.Do(t, http.MethodPut, "/"+plain, nil); status != http.StatusOK {
			t.Fatalf("create %s: HTTP %d: %s", plain, status, body)
		}
		cfg4 := cfg
		cfg4.Index = plain
		err = newTestSink(t, cfg4, dir).Open(testCtx(t))
		if err == nil || !engine.IsPermanent(err) || !strings.Contains(err.Error(), plain+" is an index, not an alias") {
			t.Fatalf("Open over a plain index: %v", err)
		}
	})
}

func aliasTargets(t *testing.T, srv *testenv.OpenSearch, alias string) []string {
	t.Helper()
	status, body := srv.Do(t, http.MethodGet, "/_alias/"+alias, nil)
	if status != http.StatusOK {
		t.Fatalf("alias %s: HTTP %d: %s", alias, status, body)
	}
	var m map[string]any
	if err := stdjson.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range m {
		names = append(names, k)
	}
	return names
}

func TestMappingRefusedByServer(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		dir := t.TempDir()
		mf := writeFile(t, dir, "m.json", `{"properties": {"age": {"type": "no_such_type"}}}`)
		err := newTestSink(t, Config{URL: srv.URL, Index: uniqueIndex(t), MappingFile: mf}, dir).Open(testCtx(t))
		if err == nil || !engine.IsPermanent(err) || !strings.Contains(err.Error(), "HTTP 400: mapper_parsing_exception") {
			t.Fatalf("Open: %v", err)
		}
	})
}

// A record the server would refuse the whole request for goes to error
// handling alone and the rest of the batch is written: an _id over 512
// bytes is caught before sending; a request refused whole anyway (here
// with the check lifted) is halved until the record at fault stands
// alone. Messages do not repeat the long id.
func TestRecordRefusedWholeGoesAlone(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		index := uniqueIndex(t)
		s := openTestSink(t, Config{URL: srv.URL, Index: index}, t.TempDir())
		longX, longE := strings.Repeat("x", 600), strings.Repeat("é", 300)
		err := s.Write(testCtx(t), []engine.Record{
			idx("ok1", "1-a", map[string]any{"n": 1}),
			idx(longX, "1-b", map[string]any{"n": 2}),
			idx("ok2", "1-c", map[string]any{"n": 3}),
			idx(longE, "1-d", map[string]any{"n": 4}),
		})
		var re engine.RecordErrors
		if !errors.As(err, &re) || len(re) != 2 || re[0].Index != 1 || re[1].Index != 3 {
			t.Fatalf("Write returned %v, want RecordErrors for records 1 and 3", err)
		}
		if msg, want := re[0].Err.Error(), `the record's _id "`+longX[:100]+`…(600 bytes)" is 600 bytes; Elasticsearch takes at most 512`; msg != want {
			t.Errorf("error %q, want %q", msg, want)
		}
		if n := srv.Count(t, index); n != 2 {
			t.Errorf("count %d, want the 2 good records", n)
		}

		s.enc.maxID = 1 << 20 // let the server refuse it
		err = s.Write(testCtx(t), []engine.Record{
			idx("ok3", "1-a", map[string]any{"n": 1}),
			idx("ok4", "1-a", map[string]any{"n": 1}),
			idx(longX, "1-b", map[string]any{"n": 2}),
			idx("ok5", "1-c", map[string]any{"n": 3}),
			idx("ok6", "1-c", map[string]any{"n": 3}),
		})
		if !errors.As(err, &re) || len(re) != 1 || re[0].Index != 2 {
			t.Fatalf("Write returned %v, want RecordErrors for record 2", err)
		}
		msg := re[0].Err.Error()
		if !strings.Contains(msg, "HTTP 400: ") || !strings.Contains(msg, "too long") || strings.Contains(msg, longX[:200]) || len(msg) > 500 {
			t.Errorf("error %q: want the server's 400, with the id clipped", msg)
		}
		if n := srv.Count(t, index); n != 6 {
			t.Errorf("count %d, want the 6 good records", n)
		}
	})
}

// TestIndexDeletedWhileRunning: the managed index (and with it the
// alias) deleted under a running sink is created again, as Open does, and
// the batch goes in; no restart is needed.
func TestIndexDeletedWhileRunning(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		dir := t.TempDir()
		alias := uniqueIndex(t)
		cfg := Config{
			URL: srv.URL, Index: alias, MappingFile: writeFile(t, dir, "m.json", strictMapping),
			Settings: map[string]any{"number_of_shards": 1, "number_of_replicas": 0},
		}
		s := openTestSink(t, cfg, dir)
		physical := s.Index()
		mustWrite(t, s, idx("a", "1-a", map[string]any{"name": "a"}))
		if status, body := srv.Do(t, http.MethodDelete, "/"+physical, nil); status != http.StatusOK {
			t.Fatalf("delete %s: HTTP %d: %s", physical, status, body)
		}
		mustWrite(t, s, idx("b", "1-b", map[string]any{"name": "b"}))
		if got := aliasTargets(t, srv, alias); len(got) != 1 || got[0] != physical {
			t.Fatalf("alias %s points at %v, want %s", alias, got, physical)
		}
		if src, _, found := srv.GetDoc(t, alias, "b"); !found || src["name"] != "b" {
			t.Fatalf("b after the index was created again: %v %v", src, found)
		}
		// The strict mapping is the configured one, not dynamic.
		err := s.Write(testCtx(t), []engine.Record{idx("c", "1-c", map[string]any{"unknown": 1})})
		var re engine.RecordErrors
		if !errors.As(err, &re) || len(re) != 1 {
			t.Fatalf("a field the strict mapping lacks: %v, want a rejected record", err)
		}
	})
}

// TestAliasWithoutWriteIndex: an alias that points at two indexes, none
// its write index, fails the whole batch (the pillow holds it and is
// unhealthy) instead of rejecting every record into the error store; the
// batch goes in once the alias is fixed.
func TestAliasWithoutWriteIndex(t *testing.T) {
	forEachDist(t, func(t *testing.T, srv *testenv.OpenSearch) {
		dir := t.TempDir()
		alias := uniqueIndex(t)
		cfg := Config{
			URL: srv.URL, Index: alias, MappingFile: writeFile(t, dir, "m.json", strictMapping),
			Settings: map[string]any{"number_of_shards": 1, "number_of_replicas": 0},
		}
		s := openTestSink(t, cfg, dir)
		other := uniqueIndex(t)
		if status, body := srv.Do(t, http.MethodPut, "/"+other, nil); status != http.StatusOK {
			t.Fatalf("create %s: HTTP %d: %s", other, status, body)
		}
		act := fmt.Sprintf(`{"actions":[{"add":{"index":%q,"alias":%q}}]}`, other, alias)
		if status, body := srv.Do(t, http.MethodPost, "/_aliases", []byte(act)); status != http.StatusOK {
			t.Fatalf("alias: HTTP %d: %s", status, body)
		}
		recs := []engine.Record{idx("a", "1-a", map[string]any{"name": "a"}), idx("b", "1-b", map[string]any{"name": "b"})}
		err := s.Write(testCtx(t), recs)
		var re engine.RecordErrors
		if err == nil || errors.As(err, &re) || !strings.Contains(err.Error(), "no write index") {
			t.Fatalf("Write through an alias with no write index: %v, want a failure of the whole batch", err)
		}
		act = fmt.Sprintf(`{"actions":[{"remove":{"index":%q,"alias":%q}}]}`, other, alias)
		if status, body := srv.Do(t, http.MethodPost, "/_aliases", []byte(act)); status != http.StatusOK {
			t.Fatalf("alias: HTTP %d: %s", status, body)
		}
		mustWrite(t, s, recs...)
		srv.Refresh(t, alias)
		if n := srv.Count(t, alias); n != 2 {
			t.Fatalf("count %d, want 2", n)
		}
	})
}
