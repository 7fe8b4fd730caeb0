package main

// The built-in sources and sinks register themselves with the engine.
import (
	_ "github.com/dimagi/ptop/builtins/couchdb"
	_ "github.com/dimagi/ptop/builtins/elasticsearch"
	_ "github.com/dimagi/ptop/builtins/file"
	_ "github.com/dimagi/ptop/builtins/kafka"
	_ "github.com/dimagi/ptop/builtins/postgres"
	_ "github.com/dimagi/ptop/builtins/tcp"
)
