// Command nettrace shows where a Linux server loses time and connections on
// the network path.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	_ "github.com/nettrace/nettrace/tracers/demo"
)

// version is set by the Makefile (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return
	}
	if globals.verbose {
		fmt.Fprintf(os.Stderr, "nettrace: %+v\n", err)
	} else {
		fmt.Fprintf(os.Stderr, "nettrace: %v\n", err)
	}
	var ue usageError
	if errors.As(err, &ue) {
		os.Exit(2)
	}
	os.Exit(1)
}
