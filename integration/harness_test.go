package integration

import (
	"cmp"
	"debug/buildinfo"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// settings is the environment contract with the Makefile.
type settings struct {
	repoRoot   string
	shimBinary string // SHIM_BINARY
	toolsBin   string // TOOLS_BIN: containerd, ctr, runc
	imageTar   string // TEST_IMAGE_TAR
	require    bool   // REQUIRE_INTEGRATION=1
	// cgroupDriver is TEST_CGROUP_DRIVER: cgroupfs (default) or systemd
	// (cgroupdriver_test.go).
	cgroupDriver string
}

func loadSettings() settings {
	root, err := filepath.Abs("..") // go test runs in integration/
	if err != nil {
		root = ".."
	}
	get := func(key, def string) string {
		if v := os.Getenv(key); v != "" {
			if abs, err := filepath.Abs(v); err == nil {
				return abs
			}
			return v
		}
		return def
	}
	return settings{
		repoRoot:     root,
		shimBinary:   get("SHIM_BINARY", filepath.Join(root, "bin", "containerd-shim-runc-v2")),
		toolsBin:     get("TOOLS_BIN", filepath.Join(root, ".tools", "bin")),
		imageTar:     get("TEST_IMAGE_TAR", filepath.Join(root, ".tools", "images", "busybox.tar")),
		require:      os.Getenv("REQUIRE_INTEGRATION") == "1",
		cgroupDriver: cmp.Or(os.Getenv("TEST_CGROUP_DRIVER"), driverCgroupfs),
	}
}

// ours reports whether SHIM_BINARY is this project's shim (its main
// module is oomshim) rather than, say, the reference shim: checks of what
// only this shim does (its log lines) apply to it alone.
func (h *harness) ours() bool {
	info, err := buildinfo.ReadFile(h.s.shimBinary)
	return err == nil && info.Main.Path == "oomshim"
}

func (s settings) containerd() string { return filepath.Join(s.toolsBin, "containerd") }
func (s settings) ctr() string        { return filepath.Join(s.toolsBin, "ctr") }
func (s settings) runc() string       { return filepath.Join(s.toolsBin, "runc") }

// missing names the first missing prerequisite, or returns "".
func (s settings) missing() string {
	if os.Geteuid() != 0 {
		return "not running as root (containers need root)"
	}
	for _, bin := range []struct{ what, path string }{
		{"SHIM_BINARY", s.shimBinary},
		{"containerd (TOOLS_BIN)", s.containerd()},
		{"ctr (TOOLS_BIN)", s.ctr()},
		{"runc (TOOLS_BIN)", s.runc()},
	} {
		st, err := os.Stat(bin.path)
		if err != nil {
			return fmt.Sprintf("%s %s: %v (run scripts/install-tools.sh / build the shim)", bin.what, bin.path, err)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Sprintf("%s %s is not an executable file", bin.what, bin.path)
		}
	}
	if _, err := os.Stat(s.imageTar); err != nil {
		return fmt.Sprintf("TEST_IMAGE_TAR %s: %v (run scripts/build-image.sh)", s.imageTar, err)
	}
	if data, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(data), "\toverlay\n") {
		return "the kernel has no overlay filesystem (needed by the overlayfs snapshotter)"
	}
	if _, err := exec.LookPath("mount"); err != nil {
		return "mount(8) not found"
	}
	switch s.cgroupDriver {
	case driverCgroupfs:
	case driverSystemd:
		// sd_booted(3): systemd is the init and the service manager.
		if _, err := os.Stat("/run/systemd/system"); err != nil {
			return "TEST_CGROUP_DRIVER=systemd but systemd is not running (no /run/systemd/system)"
		}
		if _, err := exec.LookPath("systemctl"); err != nil {
			return "TEST_CGROUP_DRIVER=systemd but systemctl is not on PATH"
		}
	default:
		return fmt.Sprintf("TEST_CGROUP_DRIVER=%q: want %s or %s", s.cgroupDriver, driverCgroupfs, driverSystemd)
	}
	return ""
}

var (
	// theHarness is the package's containerd; nil when prerequisites are missing.
	theHarness *harness
	// skipReason says why theHarness is nil.
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	s := loadSettings()
	if reason := s.missing(); reason != "" {
		skipReason = reason
		fmt.Fprintf(os.Stderr, "integration: prerequisites missing, tests will %s: %s\n",
			map[bool]string{true: "FAIL (REQUIRE_INTEGRATION=1)", false: "skip"}[s.require], reason)
		return m.Run()
	}
	h, err := startHarness(s)
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: starting containerd: %v\n", err)
		if h != nil {
			h.printLogTail(os.Stderr, 0, 80)
			h.teardown()
		}
		return 1
	}
	theHarness = h
	fmt.Fprintf(os.Stderr, "integration: containerd at %s, shim %s, image %s, cgroup driver %s\n", h.Address, s.shimBinary, h.imageRef, s.cgroupDriver)

	code := m.Run()

	problems := h.teardown()
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "integration: FAIL: %d leak(s) after all tests:\n", len(problems))
		for _, p := range problems {
			fmt.Fprintf(os.Stderr, "  - %s\n", p)
		}
		code = 1
	}
	if code != 0 {
		h.printLogTail(os.Stderr, 0, 60)
		fmt.Fprintf(os.Stderr, "integration: full containerd log kept at %s\n", h.keptLog)
	} else {
		_ = os.Remove(h.keptLog)
	}
	return code
}

// requireHarness returns the package's containerd, or skips the test (fails it
// under REQUIRE_INTEGRATION=1) with the reason the harness is missing.
func requireHarness(t testing.TB) *harness {
	t.Helper()
	if theHarness != nil {
		return theHarness
	}
	if os.Getenv("REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("integration prerequisites missing (REQUIRE_INTEGRATION=1): %s", skipReason)
	}
	t.Skipf("SKIP integration test: %s (set REQUIRE_INTEGRATION=1 to fail instead)", skipReason)
	return nil
}
