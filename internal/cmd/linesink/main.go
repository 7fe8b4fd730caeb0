// Command linesink is the demo's stand-in for logstash's tcp input: it
// accepts connections on a loopback address and appends every line it
// receives to a file.
//
//	linesink -listen 127.0.0.1:5000 -out out/cases-tcp.jsonl
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:5000", "address to listen on")
	out := flag.String("out", "tcp-lines.jsonl", "file the lines are appended to")
	flag.Parse()
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "linesink:", err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "linesink:", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	for {
		conn, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "linesink:", err)
			os.Exit(1)
		}
		go func() {
			defer func() { _ = conn.Close() }()
			sc := bufio.NewScanner(conn)
			sc.Buffer(make([]byte, 1<<20), 64<<20)
			for sc.Scan() {
				mu.Lock()
				_, _ = f.Write(append(sc.Bytes(), '\n'))
				mu.Unlock()
			}
		}()
	}
}
