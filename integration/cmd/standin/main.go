// Command standin plays, by the name it is installed under, the programs of
// the images cri-tools' critest runs, for a machine with no registry:
//
//	pause       a pod's sandbox: sleeps, reaps children, exits 0 on SIGTERM/SIGINT
//	nginx       an HTTP server (-port, default 80) whose process is named
//	            "nginx: master process ..." and writes /var/run/nginx.pid
//	httpd       an HTTP server on :80 that logs "httpd" to stdout
//	nonewprivs  installed setuid root: prints "Effective uid: N"
//
// Built static (CGO_ENABLED=0), it needs nothing from the image.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	switch name := filepath.Base(self); name {
	case "pause":
		pause()
	case "nginx":
		nginx(self)
	case "httpd":
		fmt.Println("httpd: serving on :80")
		serve(":80", "It works! (httpd stand-in)\n")
	case "nonewprivs":
		fmt.Printf("Effective uid: %d\n", os.Geteuid())
	default:
		fmt.Fprintf(os.Stderr, "standin: unknown role %q\n", name)
		os.Exit(2)
	}
}

func pause() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

const masterPrefix = "nginx: master process"

func nginx(self string) {
	if !strings.HasPrefix(os.Args[0], masterPrefix) {
		// Re-executed with nginx's process title; the executable's name
		// (nginx) stays the process's comm, which pidof matches.
		argv := append([]string{masterPrefix + " " + strings.Join(os.Args, " ")}, os.Args[1:]...)
		if err := syscall.Exec(self, argv, os.Environ()); err != nil {
			fmt.Fprintln(os.Stderr, "nginx stand-in: exec:", err)
			os.Exit(1)
		}
	}
	fs := flag.NewFlagSet("nginx", flag.ExitOnError)
	port := fs.Int("port", 80, "port to serve")
	fs.String("g", "", "ignored (nginx's directives)")
	fs.Parse(os.Args[1:])
	if err := os.MkdirAll("/var/run", 0o755); err == nil {
		os.WriteFile("/var/run/nginx.pid", []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	}
	serve(":"+strconv.Itoa(*port), "<html><body><h1>Welcome to nginx!</h1></body></html>\n")
}

func serve(addr, page string) {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, page)
	})
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
		<-sigs
		os.Exit(0)
	}()
	if err := http.ListenAndServe(addr, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
