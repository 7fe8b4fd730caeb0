package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func runPillow(t *testing.T, p *Pillow) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTapOutcomes: a tap sees every change once, in feed order, with what
// became of it and the records it made.
func TestTapOutcomes(t *testing.T) {
	src := feed(
		doc("a", "type", "case", "name", "alice"),
		doc("b", "type", "user"),
		Change{ID: "c", Rev: "2-c", Deleted: true},
		doc("d", "type", "case", "boom", true),
		doc("e", "type", "case", "name", "reject me"),
	)
	sink := &memSink{reject: func(r Record) error {
		if r.DocID == "e" {
			return errors.New("mapper_parsing_exception")
		}
		return nil
	}}
	s := testSpec(t, `doc.type == "case"`, `function transform(doc) {
		if (doc.boom) throw new Error("boom");
		return { _id: doc._id, name: doc.name };
	}`, src, sink)
	p := NewPillow(s, RunOptions{Log: quietLog(), Errors: &memErrors{}, NoRetries: true})
	tap := p.Tap(100)
	runPillow(t, p)
	tap.Close()
	var got []string
	for e := range tap.Events() {
		line := fmt.Sprintf("%s %s %s %d", e.Seq, e.ID, e.Outcome, len(e.Records))
		if e.Error != "" {
			line += " " + e.Stage + " " + e.Error
		}
		got = append(got, line)
	}
	want := []string{
		"1 a written 1",
		"2 b filtered 0",
		"3 c deleted 1",
		"4 d failed 0 transform transform: Error: boom",
		"5 e failed 1 sink:mem#0 mapper_parsing_exception",
	}
	if len(got) != len(want) {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if tap.Dropped() != 0 {
		t.Fatalf("dropped %d", tap.Dropped())
	}
}

// TestTapSlowDropsAndDoesNotBlock: a tap that never reads holds the pillow
// back not at all; what did not fit is dropped and counted.
func TestTapSlowDropsAndDoesNotBlock(t *testing.T) {
	const n = 200
	var cs []Change
	for i := 0; i < n; i++ {
		cs = append(cs, doc(fmt.Sprintf("d%03d", i), "type", "case"))
	}
	sink := &memSink{}
	s := testSpec(t, "", "", feed(cs...), sink)
	s.Batch.Size = 50
	p := NewPillow(s, RunOptions{Log: quietLog()})
	slow := p.Tap(10)
	fast := p.Tap(n)
	runPillow(t, p) // returns only if no send blocked
	if got := len(sink.records()); got != n {
		t.Fatalf("sink has %d records, want %d", got, n)
	}
	if slow.Dropped() != n-10 || len(slow.Events()) != 10 {
		t.Fatalf("slow tap: %d dropped, %d kept; want %d and 10", slow.Dropped(), len(slow.Events()), n-10)
	}
	if fast.Dropped() != 0 || len(fast.Events()) != n {
		t.Fatalf("fast tap: %d dropped, %d kept", fast.Dropped(), len(fast.Events()))
	}
	if first := <-slow.Events(); first.ID != "d000" {
		t.Fatalf("slow tap's first event is %s, want d000 (the oldest kept)", first.ID)
	}
}

// TestTapClose: a closed tap is detached; with none left, the pillow stops
// building events.
func TestTapClose(t *testing.T) {
	p := NewPillow(testSpec(t, "", "", feed(), &memSink{}), RunOptions{Log: quietLog()})
	a, b := p.Tap(1), p.Tap(1)
	a.Close()
	a.Close() // twice is harmless
	if !p.taps.active.Load() {
		t.Fatal("one tap left, but not active")
	}
	b.Close()
	if p.taps.active.Load() {
		t.Fatal("no tap left, still active")
	}
	if _, ok := <-a.Events(); ok {
		t.Fatal("Events of a closed tap is open")
	}
}
