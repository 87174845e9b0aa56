// Command shoald is the shoal node daemon.
package main

import (
	"os"

	"github.com/shoal-project/shoal/daemon"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:]))
}
