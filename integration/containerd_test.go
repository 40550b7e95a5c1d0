package integration

import (
	"oomshim/testkit"

	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// runcRoot is where the runc shim keeps runc state when the runtime options
// leave Root empty; namespaces are subdirs.
const runcRoot = testkit.RuncRoot

// harness is the package's private containerd.
type harness struct {
	*testkit.Containerd
	s        settings
	token    string // short random id of this run, in namespace names
	shimPath string // SHIM_BINARY with symlinks resolved, as /proc/<pid>/exe shows it
	handDir  string // bundles of shims started by hand
	keptLog  string // where the log is kept after teardown
	imageRef string // name of the test image, as the tarball names it

	mu         sync.Mutex
	namespaces []string // every namespace a test used
}

// startHarness starts containerd and imports the test image. On error the
// returned harness (if any) still needs teardown.
func startHarness(s settings) (*harness, error) {
	shimPath, err := filepath.EvalSymlinks(s.shimBinary)
	if err != nil {
		return nil, err
	}
	var tok [3]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, err
	}
	h := &harness{s: s, token: hex.EncodeToString(tok[:]), shimPath: shimPath}
	h.keptLog = filepath.Join(os.TempDir(), "oomshim-containerd-"+h.token+".log")
	h.Containerd, err = testkit.Start(context.Background(), testkit.Options{
		Prefix: "oomshim-test-",
		Title:  "the oomshim integration tests",
		Shim:   s.shimBinary,
		// debug: the shim gets -debug and its log lands in containerd's log.
		LogLevel:   "debug",
		ToolsBin:   s.toolsBin,
		ClientOpts: []client.Opt{client.WithTimeout(5 * time.Second)},
	})
	if h.Containerd == nil {
		return nil, err
	}
	h.handDir = filepath.Join(h.Base, "hand")
	if err != nil {
		return h, err
	}
	if err := os.MkdirAll(h.handDir, 0o711); err != nil {
		return h, err
	}
	if err := h.importImage(); err != nil {
		return h, err
	}
	return h, nil
}

// importImage imports the tarball once into a base namespace: it proves the
// image is importable before any test runs and names the image.
func (h *harness) importImage() error {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "oomshim-base-"+h.token), time.Minute)
	defer cancel()
	h.namespaces = append(h.namespaces, "oomshim-base-"+h.token)
	img, err := h.importInto(ctx)
	if err != nil {
		return err
	}
	h.imageRef = img.Name()
	return nil
}

// importInto imports and unpacks the test image into ctx's namespace.
func (h *harness) importInto(ctx context.Context) (client.Image, error) {
	return h.Import(ctx, h.s.imageTar)
}

var nsUnsafe = regexp.MustCompile(`[^a-z0-9]+`)

// newNamespace returns a fresh containerd namespace for a test: its name,
// sanitised, plus this run's token (so a crashed earlier run never collides).
func (h *harness) newNamespace(name string) string {
	base := strings.Trim(nsUnsafe.ReplaceAllString(strings.ToLower(name), "-"), "-")
	if len(base) > 50 {
		base = strings.TrimRight(base[:50], "-")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	ns := base + "-" + h.token
	for i := 2; contains(h.namespaces, ns); i++ {
		ns = fmt.Sprintf("%s-%d-%s", base, i, h.token)
	}
	h.namespaces = append(h.namespaces, ns)
	return ns
}

func (h *harness) allNamespaces() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.namespaces...)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// stopContainerd stops containerd: SIGTERM, then SIGKILL after 30 s.
func (h *harness) stopContainerd() {
	if h.Stop(30 * time.Second) {
		fmt.Fprintln(os.Stderr, "integration: containerd ignored SIGTERM for 30s, killed it")
	}
}

func (h *harness) printLogTail(w io.Writer, offset int64, n int) {
	fmt.Fprintf(w, "----- containerd log (last %d lines) -----\n%s\n----- end of containerd log -----\n", n, h.LogSince(offset, n))
}
