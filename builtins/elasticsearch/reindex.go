package elasticsearch

import (
	"bytes"
	"context"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/dimagi/ptop/component"
)

// Reindex support: see "Reindex" in the package doc.

var _ component.Rebuildable = (*Sink)(nil)

// RebuildTarget implements component.Rebuildable: it chooses the index to
// rebuild into (see the package doc), creates it if it is missing (when
// fresh, deletes it first if it exists), and returns a sink that writes
// straight into it, with the index's uuid as its id. Promote, on this
// same sink, flips the alias to it.
func (s *Sink) RebuildTarget(ctx context.Context, fresh bool) (component.Sink, string, error) {
	t, err := s.rebuildTarget(ctx, fresh)
	if err != nil {
		return nil, "", err
	}
	uuid, err := s.indexUUID(ctx, t.target)
	if err != nil {
		return nil, "", err
	}
	return t, "index " + t.target + " uuid " + uuid, nil
}

// indexUUID returns the uuid the server gave index when it created it.
func (s *Sink) indexUUID(ctx context.Context, index string) (string, error) {
	status, body, err := s.do(ctx, http.MethodGet, "/"+url.PathEscape(index)+"/_settings/index.uuid?flat_settings=true", nil)
	if err != nil {
		return "", err
	}
	if status != http.StatusOK {
		return "", s.openError("looking up index "+index, status, body)
	}
	var m map[string]struct {
		Settings map[string]string `json:"settings"`
	}
	if err := stdjson.Unmarshal(body, &m); err != nil {
		return "", fmt.Errorf("looking up index %s: %w", index, err)
	}
	uuid := m[index].Settings["index.uuid"]
	if uuid == "" {
		return "", fmt.Errorf("looking up index %s: no uuid in %.200s", index, body)
	}
	return uuid, nil
}

func (s *Sink) rebuildTarget(ctx context.Context, fresh bool) (*Sink, error) {
	if s.rebuild {
		return nil, errors.New("a rebuild target cannot be rebuilt")
	}
	if s.body == nil {
		return nil, fmt.Errorf("a reindex needs mapping_file (or settings): without them ptop writes into the index %s as named, which it cannot swap for a rebuilt one", s.alias)
	}
	points, err := s.aliasTargets(ctx)
	if err != nil {
		return nil, err
	}
	if points == nil {
		status, body, err := s.do(ctx, http.MethodHead, "/"+url.PathEscape(s.alias), nil)
		if err != nil {
			return nil, err
		}
		switch status {
		case http.StatusOK:
			return nil, fmt.Errorf("%s is an index, not an alias: a reindex builds %s and points the alias %s at it, which the index is in the way of; delete or rename the index %s first",
				s.alias, s.physical, s.alias, s.alias)
		case http.StatusNotFound:
		default:
			return nil, s.openError("checking index "+s.alias, status, body)
		}
	}
	existing, err := s.ownIndexes(ctx)
	if err != nil {
		return nil, err
	}
	name := s.chooseTarget(points, existing, time.Now())
	t := s.rebuildSink(name)
	_, ok := existing[name]
	if ok && fresh {
		// Never the live index nor a kept old one: chooseTarget skips them.
		s.log.Info("reindex: deleting the index begun before, to start from the beginning", "index", name)
		status, body, err := s.do(ctx, http.MethodDelete, "/"+url.PathEscape(name), nil)
		if err != nil {
			return nil, err
		}
		if status != http.StatusOK && status != http.StatusNotFound {
			return nil, s.openError("deleting index "+name, status, body)
		}
		ok = false
	}
	if ok {
		s.log.Info("reindex: reusing the index begun before", "index", name)
	} else if err := t.createIndex(ctx, name); err != nil {
		return nil, err
	}
	s.rmu.Lock()
	s.rebuilt = name
	s.rmu.Unlock()
	return t, nil
}

// chooseTarget picks the index to rebuild into: this definition's
// ALIAS-HASH unless the alias points at it or it is a kept old index
// (writes blocked); else the newest ALIAS-HASH-rN that is neither (a
// reindex resuming); else a new ALIAS-HASH-rSECONDS. existing maps this
// definition's indexes to whether their writes are blocked.
func (s *Sink) chooseTarget(points []string, existing map[string]bool, now time.Time) string {
	usable := func(name string) bool { return !slices.Contains(points, name) && !existing[name] }
	if usable(s.physical) {
		return s.physical
	}
	best, bestN := "", int64(-1)
	for name := range existing {
		if n, ok := s.rebuildNumber(name); ok && usable(name) && n > bestN {
			best, bestN = name, n
		}
	}
	if best != "" {
		return best
	}
	for n := now.Unix(); ; n++ {
		name := fmt.Sprintf("%s-r%d", s.physical, n)
		if _, taken := existing[name]; !taken && !slices.Contains(points, name) {
			return name
		}
	}
}

// ownIndexes returns this definition's indexes (ALIAS-HASH and
// ALIAS-HASH-rN), each with whether its writes are blocked.
func (s *Sink) ownIndexes(ctx context.Context) (map[string]bool, error) {
	p := url.PathEscape(s.physical)
	status, body, err := s.do(ctx, http.MethodGet, "/"+p+","+p+"-r*/_settings?flat_settings=true&ignore_unavailable=true&allow_no_indices=true", nil)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, s.openError("looking up indexes "+s.physical+"*", status, body)
	}
	var m map[string]struct {
		Settings map[string]any `json:"settings"`
	}
	if err := stdjson.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("looking up indexes %s*: %w", s.physical, err)
	}
	out := make(map[string]bool, len(m))
	for name, ix := range m {
		if s.ownsIndex(name) {
			out[name] = fmt.Sprint(ix.Settings["index.blocks.write"]) == "true"
		}
	}
	return out, nil
}

// rebuildSink is a sink of the same server and mapping that writes
// straight into index.
func (s *Sink) rebuildSink(index string) *Sink {
	t := &Sink{
		log: s.log, base: s.base, redacted: s.redacted, auth: s.auth,
		client: s.client, transport: s.transport, maxRetries: s.maxRetries,
		alias: s.alias, body: s.body, physical: s.physical, rebuild: true, target: index,
	}
	t.setBulkURL()
	t.enc.init()
	return t
}

// Promote implements component.Rebuildable: in one atomic request it removes
// the alias from every index it points at and points it at the index
// RebuildTarget chose, then deletes the indexes it pointed at before, or
// with keepOld blocks writes to them. A failure after the flip is logged
// and told in the description, not returned: the flip is done.
func (s *Sink) Promote(ctx context.Context, keepOld bool) (string, error) {
	s.rmu.Lock()
	target := s.rebuilt
	s.rmu.Unlock()
	if target == "" {
		return "", errors.New("nothing to promote: RebuildTarget was not called on this sink")
	}
	points, err := s.aliasTargets(ctx)
	if err != nil {
		return "", err
	}
	var old []string
	for _, p := range points {
		if p != target {
			old = append(old, p)
		}
	}
	if len(old) == 0 && len(points) > 0 {
		return fmt.Sprintf("alias %s already points at %s", s.alias, target), nil
	}
	type aliasAction struct {
		Index string `json:"index"`
		Alias string `json:"alias"`
	}
	var actions []map[string]aliasAction
	for _, p := range old {
		actions = append(actions, map[string]aliasAction{"remove": {Index: p, Alias: s.alias}})
	}
	actions = append(actions, map[string]aliasAction{"add": {Index: target, Alias: s.alias}})
	req, err := stdjson.Marshal(map[string]any{"actions": actions})
	if err != nil {
		return "", err
	}
	status, body, err := s.do(ctx, http.MethodPost, "/_aliases", req)
	if err != nil {
		return "", err
	}
	if status != http.StatusOK {
		return "", s.httpError("pointing alias "+s.alias+" at "+target, status, body)
	}
	s.log.Info("pointed alias at index", "alias", s.alias, "index", target, "was", old)
	desc := fmt.Sprintf("alias %s now points at %s", s.alias, target)
	if len(old) == 0 {
		return desc + " (a new alias)", nil
	}
	was := strings.Join(old, ", ")
	path := "/" + escapeJoin(old)
	if keepOld {
		status, body, err = s.do(ctx, http.MethodPut, path+"/_settings", []byte(`{"index":{"blocks":{"write":true}}}`))
		if err == nil && status != http.StatusOK {
			err = s.httpError("blocking writes to "+was, status, body)
		}
		if err != nil {
			s.log.Warn("could not block writes to the old index", "index", was, "error", err)
			return fmt.Sprintf("%s (was %s, kept; blocking its writes failed: %v)", desc, was, err), nil
		}
		return fmt.Sprintf("%s (was %s, kept read-only)", desc, was), nil
	}
	status, body, err = s.do(ctx, http.MethodDelete, path, nil)
	if err == nil && status != http.StatusOK && status != http.StatusNotFound {
		err = s.httpError("deleting "+was, status, body)
	}
	if err != nil {
		s.log.Warn("could not delete the old index", "index", was, "error", err)
		return fmt.Sprintf("%s (was %s; deleting it failed, delete it by hand: %v)", desc, was, err), nil
	}
	return fmt.Sprintf("%s (was %s, deleted)", desc, was), nil
}

// escapeJoin is names as a comma-separated path segment.
func escapeJoin(names []string) string {
	var b bytes.Buffer
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(url.PathEscape(n))
	}
	return b.String()
}
