// A greeting program with a service mode: `app NAME` prints the greeting once,
// `app -serve ADDR` answers HTTP requests with it. net/http is what a real service
// links, and with CGO_ENABLED=0 Go compiles a dozen standard packages (net, crypto/tls,
// net/http) into its build cache: the work the exported cache mount saves a CI runner.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"strings"

	"example.com/goci/internal/greeting"
)

func main() {
	serve := flag.String("serve", "", "serve greetings over HTTP on this address instead")
	flag.Parse()
	if *serve != "" {
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			name := strings.Trim(r.URL.Path, "/")
			if name == "" {
				name = "world"
			}
			fmt.Fprintln(w, greeting.For(name))
		})
		log.Fatal(http.ListenAndServe(*serve, nil))
	}
	name := "world"
	if flag.NArg() > 0 {
		name = flag.Arg(0)
	}
	fmt.Println(greeting.For(name))
}
