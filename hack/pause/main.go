// Command pause is the sandbox ("pause") container of make e2e's cluster, which has no registry
// to pull registry.k8s.io/pause from: it holds the pod's namespaces open until it is told to
// stop, and as the pod's first process it reaps the children that end up with it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
