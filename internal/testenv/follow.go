package testenv

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The "records follow their document" scenario, the same for every sink:
// a pillow making one record per parent link of an open case (like
// pipelines/households.yaml), fed in two parts, with a restart between.
// After each part, the sink must hold exactly FollowAfter[i]: the records
// the current documents produce.

// FollowPillow is the pillow's filter, transform and batch, as YAML keys
// to put beside a source and sinks.
const FollowPillow = `filter: doc.doc_type == "case" && !doc.closed
transform: |
  function transform(doc) {
    return (doc.parents || []).map(p => ({ _id: doc._id + ":" + p, case_id: doc._id, parent: p }));
  }
batch: {size: 3, wait: 10ms}
`

// FollowChange is a change of the scenario.
type FollowChange struct {
	ID, Rev string
	Deleted bool
	Doc     map[string]any // nil for a deletion
}

func followCase(id, rev string, closed bool, parents ...string) FollowChange {
	return FollowChange{ID: id, Rev: rev, Doc: map[string]any{
		"_id": id, "_rev": rev, "doc_type": "case", "closed": closed, "parents": parents,
	}}
}

// FollowFeeds are the two parts of the feed.
var FollowFeeds = [2][]FollowChange{{
	followCase("c1", "1-a", false, "h1", "h2"),
	followCase("c2", "1-a", false, "h1"),
	followCase("c3", "1-a", false, "h3"),
	followCase("c4", "1-a", false, "h4"),
	{ID: "f1", Rev: "1-a", Doc: map[string]any{"_id": "f1", "doc_type": "form"}}, // never indexed
	{ID: "f2", Rev: "1-a", Doc: map[string]any{"_id": "f2", "doc_type": "form"}},
	followCase("c1", "2-a", false, "h2", "h5"), // parent changed
	followCase("c3", "2-a", true, "h3"),        // closed
	followCase("c4", "2-a", false),             // no records now
	{ID: "f1", Rev: "2-a", Deleted: true},      // never indexed, deleted
}, {
	followCase("c3", "3-a", false, "h3", "h6"), // reopened
	{ID: "c1", Rev: "3-a", Deleted: true},      // deleted
	followCase("c2", "2-a", false, "h7"),
	followCase("c2", "3-a", false, "h8"), // twice in a batch
	followCase("c5", "1-a", false, "h9"),
}}

// FollowAfter lists the record ids the sink holds after each part.
var FollowAfter = [2][]string{
	{"c1:h2", "c1:h5", "c2:h1"},
	{"c2:h8", "c3:h3", "c3:h6", "c5:h9"},
}

// FollowFeedFile writes part i of the feed as a file source's input (a
// continuous feed's rows), with sequence numbers following the parts.
func FollowFeedFile(t testing.TB, i int) string {
	t.Helper()
	var b strings.Builder
	seq := 1
	for j := 0; j < i; j++ {
		seq += len(FollowFeeds[j])
	}
	for _, c := range FollowFeeds[i] {
		row := map[string]any{"seq": seq, "id": c.ID, "changes": []any{map[string]any{"rev": c.Rev}}}
		if c.Deleted {
			row["deleted"] = true
			row["doc"] = map[string]any{"_id": c.ID, "_rev": c.Rev, "_deleted": true}
		} else {
			row["doc"] = c.Doc
		}
		line, _ := json.Marshal(row)
		b.Write(line)
		b.WriteByte('\n')
		seq++
	}
	path := filepath.Join(t.TempDir(), fmt.Sprintf("feed%d.jsonl", i))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// FileSinkIDs folds what a file sink wrote at path (index and delete
// lines, in order) into the ids it holds in the end, sorted.
func FileSinkIDs(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	state := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var l struct{ Action, ID string }
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("file sink line %q: %v", line, err)
		}
		switch l.Action {
		case "index":
			state[l.ID] = true
		case "delete":
			delete(state, l.ID)
		default:
			t.Fatalf("file sink line %q: action %q", line, l.Action)
		}
	}
	ids := []string{}
	for id := range state {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
