// Command containerd-shim-runc-v2 is a containerd runtime shim for runc
// (runtime type io.containerd.runc.v2).
package main

import (
	"os"

	"oomshim/shim"
)

func main() {
	os.Exit(shim.Main(os.Args))
}
