// hello-go: a small program built by examples/hello-go/Dockerfile. It uses a few
// standard packages (net/http, encoding/json) so that the build compiles and links a
// realistic share of the Go toolchain's files, but it needs no network to run: the
// handler is called in-process through an httptest recorder.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
)

type greeting struct {
	Text string `json:"text"`
	Arch string `json:"arch"`
}

func handler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	reply := greeting{Text: "hello from a Go program built by lazybuild", Arch: runtime.GOARCH}
	if err := json.NewEncoder(w).Encode(reply); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

func main() {
	recorder := httptest.NewRecorder()
	handler(recorder, httptest.NewRequest(http.MethodGet, "/", nil))
	var got greeting
	if err := json.Unmarshal(recorder.Body.Bytes(), &got); err != nil {
		fmt.Fprintln(os.Stderr, "hello-go:", err)
		os.Exit(1)
	}
	fmt.Printf("%s (%s)\n", got.Text, got.Arch)
}
