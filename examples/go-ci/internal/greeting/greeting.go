// Package greeting is the example's own package: a dependency that needs no module
// proxy, as a CI build in a network-less step requires.
package greeting

import "fmt"

// For says hello to name.
func For(name string) string {
	return fmt.Sprintf("hello, %s, from a Go program built in CI by lazybuild", name)
}
