package engine

// The types a source, a sink or a checkpoint store is written against live
// in package component; the engine uses them under the same names.

import (
	"sort"
	"strings"

	"github.com/dimagi/ptop/component"
)

type (
	// Change is component.Change.
	Change = component.Change
	// Record is component.Record.
	Record = component.Record
	// Source is component.Source.
	Source = component.Source
	// CheckpointStore is component.CheckpointStore.
	CheckpointStore = component.CheckpointStore
	// Sink is component.Sink.
	Sink = component.Sink
	// TransactionalSink is component.TransactionalSink.
	TransactionalSink = component.TransactionalSink
	// DocSet is component.DocSet.
	DocSet = component.DocSet
	// DocSetWriter is component.DocSetWriter.
	DocSetWriter = component.DocSetWriter
	// Rebuildable is component.Rebuildable.
	Rebuildable = component.Rebuildable
	// RecordError is component.RecordError.
	RecordError = component.RecordError
	// RecordErrors is component.RecordErrors.
	RecordErrors = component.RecordErrors
	// Failure is component.Failure.
	Failure = component.Failure
	// ErrorEntry is component.ErrorEntry.
	ErrorEntry = component.ErrorEntry
	// ErrorStore is component.ErrorStore.
	ErrorStore = component.ErrorStore
	// ErrorStoreProvider is component.ErrorStoreProvider.
	ErrorStoreProvider = component.ErrorStoreProvider
	// DocReader is component.DocReader.
	DocReader = component.DocReader
	// FeedStatus is component.FeedStatus.
	FeedStatus = component.FeedStatus
	// FeedErrorer is component.FeedErrorer.
	FeedErrorer = component.FeedErrorer
	// PendingCounter is component.PendingCounter.
	PendingCounter = component.PendingCounter
	// CheckpointTimer is component.CheckpointTimer.
	CheckpointTimer = component.CheckpointTimer
	// StartResolver is component.StartResolver.
	StartResolver = component.StartResolver
	// PositionGuard is component.PositionGuard.
	PositionGuard = component.PositionGuard
	// LogErrorStore is component.LogErrorStore.
	LogErrorStore = component.LogErrorStore
	// BuildContext is component.BuildContext.
	BuildContext = component.BuildContext
)

type plugin = component.Factory

var (
	sources     = component.Registered(component.KindSource)
	sinks       = component.Registered(component.KindSink)
	checkpoints = component.Registered(component.KindCheckpoint)
)

// RegisterSource is component.RegisterSource.
func RegisterSource[C any](name string, build func(cfg *C, bc BuildContext) (Source, error)) {
	component.RegisterSource(name, build)
}

// RegisterSink is component.RegisterSink.
func RegisterSink[C any](name string, build func(cfg *C, bc BuildContext) (Sink, error)) {
	component.RegisterSink(name, build)
}

// RegisterCheckpointStore is component.RegisterCheckpointStore.
func RegisterCheckpointStore[C any](name string, build func(cfg *C, bc BuildContext) (CheckpointStore, error)) {
	component.RegisterCheckpointStore(name, build)
}

// Permanent is component.Permanent.
func Permanent(err error) error { return component.Permanent(err) }

// IsPermanent is component.IsPermanent.
func IsPermanent(err error) bool { return component.IsPermanent(err) }

func names(reg map[string]plugin) string {
	var ns []string
	for n := range reg {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return strings.Join(ns, ", ")
}

// SeqPosition is component.SeqPosition.
func SeqPosition(seq string) int64 { return component.SeqPosition(seq) }
