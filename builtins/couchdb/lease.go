package couchdb

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/dimagi/ptop/component"
	"github.com/go-kivik/kivik/v4"
)

// Leases (component.LeaseStore) are regular documents of the error store's
// database, "~lease:<db>:<name>", written with their _rev: a write with a
// stale _rev is a 409, which is the compare-and-swap. (CouchDB 3 ignores
// _rev on _local documents, so a _local lease would not exclude anyone;
// and a regular document in the source's database would show up in its
// own changes feed.) They have no "pillow" key, so the error store never
// takes them for entries.
//
//	{"_id": "~lease:cases:case-search", "lease": "case-search",
//	 "holder": "host:1234:9f3a0c1e", "ttl_ms": 10000,
//	 "renewed": "2026-12-03T07:00:00Z", "space": "host/pid:[4026531836]"}

type leaseDoc struct {
	ID      string `json:"_id"`
	Rev     string `json:"_rev,omitempty"`
	Lease   string `json:"lease"`
	Holder  string `json:"holder"`
	TTLms   int64  `json:"ttl_ms"`
	Renewed string `json:"renewed"`
	Space   string `json:"space,omitempty"`
}

func (s *Source) leaseStore() (*errorStore, string, error) {
	es, err := s.ErrorStore()
	if err != nil {
		return nil, "", err
	}
	return es.(*errorStore), "~lease:" + s.cfg.DB + ":", nil
}

// ReadLease implements component.LeaseStore.
func (s *Source) ReadLease(ctx context.Context, name string) (component.Lease, error) {
	e, prefix, err := s.leaseStore()
	if err != nil {
		return component.Lease{}, err
	}
	var d leaseDoc
	err = s.call(ctx, http.MethodGet, e.docPath(prefix+name), nil, nil, &d)
	switch {
	case kivik.HTTPStatus(err) == http.StatusNotFound:
		return component.Lease{}, nil
	case err != nil:
		return component.Lease{}, e.errorf("reading lease %s: %w", name, e.describe(s.unreachable(err)))
	}
	return component.Lease{
		Holder: d.Holder, TTL: time.Duration(d.TTLms) * time.Millisecond,
		Renewed: parseTime(d.Renewed), Space: d.Space, Version: d.Rev,
	}, nil
}

// WriteLease implements component.LeaseStore. The database is created if it
// is missing.
func (s *Source) WriteLease(ctx context.Context, name, prev string, l component.Lease) (string, error) {
	e, prefix, err := s.leaseStore()
	if err != nil {
		return "", err
	}
	d := leaseDoc{
		ID: prefix + name, Rev: prev, Lease: name, Holder: l.Holder, TTLms: l.TTL.Milliseconds(),
		Renewed: formatTime(l.Renewed), Space: l.Space,
	}
	for created := false; ; created = true {
		var res struct {
			Rev string `json:"rev"`
		}
		err := s.call(ctx, http.MethodPut, e.docPath(d.ID), nil, d, &res)
		switch status := kivik.HTTPStatus(err); {
		case err == nil:
			return res.Rev, nil
		case status == http.StatusConflict:
			return "", fmt.Errorf("lease %s: %w", name, component.ErrLeaseConflict)
		case status == http.StatusNotFound && !created:
			if err := e.createDB(ctx); err != nil {
				return "", err
			}
			continue
		}
		return "", e.errorf("writing lease %s: %w", name, e.describe(s.unreachable(err)))
	}
}

var _ component.LeaseStore = (*Source)(nil)
