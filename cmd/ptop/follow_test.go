package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/dimagi/ptop/internal/testenv"
)

// TestRecordsFollowAcrossKill9 runs a pillow making one record per parent
// link of an open case into a file and a Postgres table, while cases get
// new parents, close, reopen and are deleted, and kills ptop with SIGKILL
// at random moments. After the last restart both sinks hold exactly the
// records the current documents produce: the file through the record sets
// kept in CouchDB (ptop_records), the table through its _doc_id column.
func TestRecordsFollowAcrossKill9(t *testing.T) {
	couch := testenv.StartCouch(t, testenv.CouchOptions{})
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	couch.CreateDB(t, "hh")
	const n = 2000
	rnd := rand.New(rand.NewPCG(5, 6))
	parents := func() []any {
		var ps []any
		for h := 0; h < 4; h++ {
			if rnd.IntN(2) == 0 {
				ps = append(ps, fmt.Sprintf("h%d", h))
			}
		}
		return ps
	}
	for lo := 0; lo < n; lo += 500 {
		var docs []map[string]any
		for i := lo; i < lo+500; i++ {
			typ := "case"
			if i%10 == 9 {
				typ = "form" // never indexed
			}
			docs = append(docs, map[string]any{"_id": fmt.Sprintf("c%04d", i), "type": typ, "closed": i%3 == 0, "parents": parents()})
		}
		couch.BulkDocs(t, "hh", docs)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "out.jsonl")
	pdir := filepath.Join(dir, "pipelines")
	write(t, filepath.Join(pdir, "hh.yaml"), `name: hh
source:
  couchdb: {url: "${COUCH_URL}", db: hh, heartbeat: 1s}
filter: doc.type == "case" && !doc.closed
transform: |
  function transform(doc) {
    return (doc.parents || []).map(p => ({ _id: doc._id + ":" + p, parent: p }));
  }
batch: {size: 100, wait: 20ms}
sinks:
  - file: {path: "${OUT}"}
  - postgres: {dsn: "${PG_DSN}", table: hh, columns: {parent: text}, create: true}
`)
	t.Setenv("COUCH_URL", couch.URL)
	t.Setenv("OUT", out)
	t.Setenv("PG_DSN", dsn)

	// Meanwhile, cases change parents, close, reopen, and are deleted,
	// and ptop is killed at random eight times.
	stopWriting := editAtRandom(t, couch.URL+"/hh/", rand.New(rand.NewPCG(7, 8)), func(rnd *rand.Rand) string {
		return fmt.Sprintf("c%04d", rnd.IntN(n))
	}, func(rnd *rand.Rand, d map[string]any) (remove bool) {
		switch rnd.IntN(8) {
		case 0:
			return true
		case 1, 2:
			d["closed"] = !d["closed"].(bool)
		default:
			var ps []any
			for h := 0; h < 4; h++ {
				if rnd.IntN(2) == 0 {
					ps = append(ps, fmt.Sprintf("h%d", h))
				}
			}
			d["parents"] = ps
		}
		return false
	})
	killAtRandom(t, pdir, 8, rnd, 200*time.Millisecond, 500*time.Millisecond)
	stopWriting()

	// What the current documents produce.
	_, body := couch.Do(t, http.MethodGet, "/hh/_all_docs?include_docs=true", nil)
	var all struct {
		Rows []struct {
			Doc struct {
				ID      string   `json:"_id"`
				Type    string   `json:"type"`
				Closed  bool     `json:"closed"`
				Parents []string `json:"parents"`
			} `json:"doc"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(body, &all); err != nil {
		t.Fatal(err)
	}
	want := []string{}
	for _, r := range all.Rows {
		if d := r.Doc; d.Type == "case" && !d.Closed {
			for _, p := range d.Parents {
				want = append(want, d.ID+":"+p)
			}
		}
	}
	sort.Strings(want)

	p := startPtop(t, "run", pdir)
	fileIDs := func() []string {
		ids := []string{}
		for id := range foldLines(readLines(t, out)) {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		return ids
	}
	tableIDs := func() []string {
		ids := []string{}
		for _, r := range pg.Query(t, dsn, "SELECT _id FROM hh ORDER BY _id COLLATE \"C\"") {
			ids = append(ids, r[0].(string))
		}
		return ids
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		f, tb := fileIDs(), tableIDs()
		if reflect.DeepEqual(f, want) && reflect.DeepEqual(tb, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the kills, %d records expected; the file holds %d (%d stale, %d missing), the table %d (%d stale, %d missing); log:\n%s",
				len(want), len(f), len(minus(f, want)), len(minus(want, f)), len(tb), len(minus(tb, want)), len(minus(want, tb)), p.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.stop(t)
	t.Logf("%d records expected in the end", len(want))
}

// minus returns the elements of a not in b.
func minus(a, b []string) []string {
	in := map[string]bool{}
	for _, x := range b {
		in[x] = true
	}
	var out []string
	for _, x := range a {
		if !in[x] {
			out = append(out, x)
		}
	}
	return out
}
