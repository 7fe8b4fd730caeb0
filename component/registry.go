package component

import (
	"fmt"
	"sort"
)

// Factory makes one type of source, sink or checkpoint store from its
// configuration. The engine decodes a pillow's YAML under the type's name
// into NewConfig's value, then calls Build.
type Factory struct {
	NewConfig func() any
	Build     func(cfg any, bc BuildContext) (any, error)
}

// Kind is what a Factory makes.
type Kind string

// The kinds of components.
const (
	KindSource     Kind = "source"
	KindSink       Kind = "sink"
	KindCheckpoint Kind = "checkpoint store"
)

var registry = map[Kind]map[string]Factory{
	KindSource:     {},
	KindSink:       {},
	KindCheckpoint: {},
}

// Registered returns the factories of a kind by name. The map is the
// registry itself: read it, never write it.
func Registered(k Kind) map[string]Factory { return registry[k] }

// Names returns the registered names of a kind, sorted.
func Names(k Kind) []string {
	var ns []string
	for n := range registry[k] {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

// RegisterSource makes a source type available to pillows as
// `source: {NAME: …}`. The YAML under NAME is decoded into a C (strictly,
// with positions, after SetDefaults and followed by Validate when C has
// them); build then makes the source without touching the network. Call it
// from the component's init.
func RegisterSource[C any](name string, build func(cfg *C, bc BuildContext) (Source, error)) {
	register(KindSource, name, build)
}

// RegisterSink makes a sink type available to pillows as `- NAME: {…}` in
// `sinks`, like RegisterSource.
func RegisterSink[C any](name string, build func(cfg *C, bc BuildContext) (Sink, error)) {
	register(KindSink, name, build)
}

// RegisterCheckpointStore makes a checkpoint store available to pillows
// as `checkpoint: {NAME: …}`, like RegisterSource. Without that key a
// pillow keeps its checkpoint in its source, when the source can.
func RegisterCheckpointStore[C any](name string, build func(cfg *C, bc BuildContext) (CheckpointStore, error)) {
	register(KindCheckpoint, name, build)
}

func register[C, T any](k Kind, name string, build func(*C, BuildContext) (T, error)) {
	reg := registry[k]
	if _, dup := reg[name]; dup {
		panic(fmt.Sprintf("component: %s %s registered twice", k, name))
	}
	reg[name] = Factory{
		NewConfig: func() any { return new(C) },
		Build: func(cfg any, bc BuildContext) (any, error) {
			return build(cfg.(*C), bc)
		},
	}
}
