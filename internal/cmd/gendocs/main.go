// Command gendocs makes sample case documents (about 420 bytes each) for
// the demo and the benchmarks: as a changes-feed dump for the file source,
// or loaded into a CouchDB-compatible database with _bulk_docs.
//
//	gendocs -n 100000 -changes changes.jsonl
//	gendocs -n 100000 -couch http://127.0.0.1:5984 -db cases
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	n := flag.Int("n", 1000, "number of documents")
	changes := flag.String("changes", "", "write a changes feed dump (one row per line) to this file")
	couch := flag.String("couch", "", "load the documents into this server")
	db := flag.String("db", "cases", "database to create and load (with -couch)")
	batch := flag.Int("batch", 1000, "documents per _bulk_docs request")
	flag.Parse()
	var err error
	switch {
	case *changes != "":
		err = writeChanges(*changes, *n)
	case *couch != "":
		err = load(*couch, *db, *n, *batch)
	default:
		err = fmt.Errorf("give -changes FILE or -couch URL")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

var (
	domains  = []string{"demo", "prod", "test"}
	villages = []string{"Kisumu", "Nakuru", "Eldoret", "Machakos"}
	first    = []string{"amina", "brian", "chege", "dalia", "esther", "faith", "grace", "hassan"}
)

// Doc is sample document i: most are open cases in the demo or prod
// domain; every tenth is another doc_type, a third are in domain test.
func Doc(i int) map[string]any {
	docType := "CommCareCase"
	if i%10 == 9 {
		docType = "XFormInstance"
	}
	return map[string]any{
		"_id":         fmt.Sprintf("case-%08d", i),
		"doc_type":    docType,
		"domain":      domains[i%3],
		"type":        "patient",
		"name":        fmt.Sprintf("%s %d", first[i%len(first)], i),
		"owner_id":    fmt.Sprintf("owner-%04d", i%500),
		"opened_on":   time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute).Format(time.RFC3339),
		"modified_on": time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute).Format(time.RFC3339),
		"closed":      i%7 == 0,
		"properties": map[string]any{
			"age": 1 + i%90, "village": villages[i%len(villages)], "phone": fmt.Sprintf("+2547%08d", i), "risk": []string{"low", "medium", "high"}[i%3],
		},
		"indices": []any{map[string]any{"identifier": "parent", "referenced_type": "household", "referenced_id": fmt.Sprintf("hh-%06d", i/4)}},
	}
}

func writeChanges(path string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for i := 0; i < n; i++ {
		d := Doc(i)
		rev := fmt.Sprintf("1-%032x", i)
		d["_rev"] = rev
		row := map[string]any{"seq": i + 1, "id": d["_id"], "changes": []any{map[string]any{"rev": rev}}, "doc": d}
		if err := enc.Encode(row); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

func load(url, db string, n, batch int) error {
	req, _ := http.NewRequest(http.MethodPut, url+"/"+db, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusPreconditionFailed {
		return fmt.Errorf("creating %s: %s", db, resp.Status)
	}
	for lo := 0; lo < n; lo += batch {
		docs := make([]any, 0, batch)
		for i := lo; i < min(lo+batch, n); i++ {
			docs = append(docs, Doc(i))
		}
		body, _ := json.Marshal(map[string]any{"docs": docs})
		resp, err := http.Post(url+"/"+db+"/_bulk_docs", "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("_bulk_docs: %s: %s", resp.Status, b)
		}
		if bytes.Contains(b, []byte(`"error"`)) {
			return fmt.Errorf("_bulk_docs: %s", b)
		}
	}
	return nil
}
