package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/fifo"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"oomshim/event"
	"oomshim/oom"
	"oomshim/process"
	"oomshim/task"
)

const (
	// readyFdEnv names the descriptor the server reports readiness on.
	readyFdEnv = "SHIM_READY_FD"
	readyOK    = "ok"
	// stopTimeout bounds the ttrpc server's shutdown.
	stopTimeout = 10 * time.Second
	// drainTimeout bounds the event queue's last drain, after the last
	// request: longer than an event's retries when containerd refuses it
	// (event.DefaultBackoff), and long enough for a containerd that takes
	// no events for minutes (stopped, restarting, stuck) to get every
	// queued event once it takes them again. Past it the shim exits and
	// logs each event it could not forward.
	drainTimeout = 5 * time.Minute
)

// serve is the long-running shim: it serves the task API until the last
// container is gone and containerd calls Shutdown, or until SIGTERM.
func serve(f flags) error {
	ready := readyWriter()
	err := runServer(f, ready)
	if err != nil && ready != nil {
		fmt.Fprintln(ready, err)
		ready.Close()
	}
	return err
}

// readyWriter returns the pipe start waits on, if there is one.
func readyWriter() *os.File {
	fd, err := strconv.Atoi(os.Getenv(readyFdEnv))
	os.Unsetenv(readyFdEnv)
	if err != nil || fd < 3 {
		return nil
	}
	unix.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), "ready")
}

func runServer(f flags, ready *os.File) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx, err := setupLogging(ctx, f)
	if err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become child subreaper: %w", err)
	}
	signal.Ignore(unix.SIGPIPE)
	if f.socket == "" {
		return errors.New("no -socket to serve")
	}
	l, err := serverListener(f.socket)
	if err != nil {
		return err
	}
	defer l.remove()

	fwd := event.NewTTRPCForwarder(os.Getenv("TTRPC_ADDRESS"))
	defer fwd.Close()
	events := event.New(f.namespace, fwd, event.DefaultBackoff)

	watcher, err := oom.NewWatcher(ctx, task.OOMReporter(ctx, events))
	if err != nil {
		l.Close()
		return err
	}
	defer watcher.Close()

	var once sync.Once
	stop := make(chan struct{})
	svc := task.New(ctx, task.Config{
		Namespace: f.namespace,
		Version:   Version,
		Events:    events,
		OOM:       watcher,
		Shutdown:  func() { once.Do(func() { close(stop) }) },
		IdleExit:  idleExit(ctx),
	})
	reaper := process.NewReaper(svc.HandleExits)
	gorunc.Monitor = reaper
	reapCtx, stopReaping := context.WithCancel(ctx)
	defer stopReaping()
	go reaper.Run(reapCtx)

	server, err := newTTRPCServer(ttrpc.WithUnaryServerInterceptor(svc.Interceptor))
	if err != nil {
		l.Close()
		return fmt.Errorf("create ttrpc server: %w", err)
	}
	svc.Register(server)
	served := make(chan error, 1)
	go func() { served <- server.Serve(ctx, l) }()
	svc.StartIdleExit()

	if ready != nil {
		fmt.Fprintln(ready, readyOK)
		ready.Close()
	}
	log.G(ctx).WithField("socket", f.socket).Debug("shim serving")

	term := make(chan os.Signal, 1)
	signal.Notify(term, unix.SIGTERM, unix.SIGINT)
	dump := make(chan os.Signal, 1)
	signal.Notify(dump, unix.SIGUSR1)
	for done := false; !done; {
		select {
		case <-stop:
			done = true
		case s := <-term:
			log.G(ctx).WithField("signal", s).Info("shim terminating")
			done = true
		case err := <-served:
			if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
				log.G(ctx).WithError(err).Error("ttrpc server failed")
			}
			done = true
		case <-dump:
			dumpStacks(ctx)
		}
	}

	sctx, scancel := context.WithTimeout(ctx, stopTimeout)
	defer scancel()
	if err := server.Shutdown(sctx); err != nil {
		log.G(ctx).WithError(err).Warn("ttrpc server shutdown")
		server.Close()
	}
	dctx, dcancel := context.WithTimeout(ctx, drainTimeout)
	defer dcancel()
	if err := events.Shutdown(dctx); err != nil {
		log.G(ctx).WithError(err).Error("event queue shutdown")
	}
	stopReaping()
	<-reaper.Done()
	log.G(ctx).Debug("shim exited")
	return nil
}

// newTTRPCServer serves only peers with the shim's own uid (containerd's),
// as the stock shim does.
func newTTRPCServer(opts ...ttrpc.ServerOpt) (*ttrpc.Server, error) {
	return ttrpc.NewServer(append([]ttrpc.ServerOpt{ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser())}, opts...)...)
}

// idleExitEnv overrides defaultIdleExit: a Go duration, "0" for never.
const (
	idleExitEnv     = "SHIM_IDLE_EXIT"
	defaultIdleExit = 2 * time.Minute
)

// idleExit is how long a server holding no container waits for a request
// before it exits (task/idle.go).
func idleExit(ctx context.Context) time.Duration {
	v := os.Getenv(idleExitEnv)
	if v == "" {
		return defaultIdleExit
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		log.G(ctx).WithField(idleExitEnv, v).Warnf("not a duration: idle exit after %v", defaultIdleExit)
		return defaultIdleExit
	}
	return d
}

// setupLogging sends the log to the bundle's "log" fifo, which containerd
// copies into its own log, and dups it onto stderr so that a panic lands
// there too. Without the fifo (a shim started by hand) stderr is kept.
func setupLogging(ctx context.Context, f flags) (context.Context, error) {
	logger := logrus.New()
	logger.SetFormatter(&logrus.TextFormatter{TimestampFormat: log.RFC3339NanoFixed, FullTimestamp: true})
	logger.SetLevel(logrus.InfoLevel)
	if f.debug {
		logger.SetLevel(logrus.DebugLevel)
	}
	var out io.Writer = os.Stderr
	if _, err := os.Stat("log"); err == nil {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		w, err := fifo.OpenFifoDup2(octx, "log", unix.O_WRONLY, 0o700, int(os.Stderr.Fd()))
		cancel()
		if err != nil {
			return ctx, fmt.Errorf("open shim log fifo: %w", err)
		}
		out = w
	}
	logger.SetOutput(out)
	entry := logrus.NewEntry(logger).WithFields(logrus.Fields{
		"runtime":   RuntimeName,
		"namespace": f.namespace,
		"pid":       os.Getpid(),
	})
	log.L = entry
	return log.WithLogger(ctx, entry), nil
}

func dumpStacks(ctx context.Context) {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	log.G(ctx).Infof("=== goroutine stack dump ===\n%s\n=== end of dump ===", buf)
}
