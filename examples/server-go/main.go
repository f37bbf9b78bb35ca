// server-go: a small HTTP server built by examples/server-go/Dockerfile. It listens on
// 127.0.0.1:8080 (ADDR overrides) and prints a "ready" line on stdout once it accepts
// connections, which is what start-up benchmarks and `lazybuild build
// --workload-ready ready` wait for.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"time"
)

type status struct {
	Text   string `json:"text"`
	Arch   string `json:"arch"`
	Uptime string `json:"uptime"`
}

func main() {
	started := time.Now()
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		reply := status{
			Text:   "hello from a Go server built by lazybuild",
			Arch:   runtime.GOARCH,
			Uptime: time.Since(started).Round(time.Millisecond).String(),
		}
		if err := json.NewEncoder(w).Encode(reply); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("server-go: %v", err)
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("ready: listening on http://%s\n", listener.Addr())
	log.Fatal(server.Serve(listener))
}
