package engine

// The types a source, a sink or a checkpoint store is written against live
// in package component; the engine uses them under the same names.

import (
	"sort"
	"strings"

	"github.com/dimagi/ptop/component"
)

type (
	Change             = component.Change
	Record             = component.Record
	Source             = component.Source
	CheckpointStore    = component.CheckpointStore
	Sink               = component.Sink
	TransactionalSink  = component.TransactionalSink
	Rebuildable        = component.Rebuildable
	RecordError        = component.RecordError
	RecordErrors       = component.RecordErrors
	Failure            = component.Failure
	ErrorEntry         = component.ErrorEntry
	ErrorStore         = component.ErrorStore
	ErrorStoreProvider = component.ErrorStoreProvider
	DocReader          = component.DocReader
	FeedStatus         = component.FeedStatus
	FeedErrorer        = component.FeedErrorer
	PendingCounter     = component.PendingCounter
	CheckpointTimer    = component.CheckpointTimer
	StartResolver      = component.StartResolver
	PositionGuard      = component.PositionGuard
	LogErrorStore      = component.LogErrorStore
	BuildContext       = component.BuildContext
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
