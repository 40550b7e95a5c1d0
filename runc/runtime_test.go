package runc

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types/runc/options"
)

func TestLastError(t *testing.T) {
	dir := t.TempDir()
	log := `{"level":"info","msg":"starting"}
not json at all
{"level":"error","msg":"first failure"}
{"level":"warning","msg":"later warning"}
{"level":"error","msg":"exec: \"nosuch\": executable file not found in $PATH"}
`
	if err := os.WriteFile(filepath.Join(dir, logFile), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	err := WrapError("create", dir, &exec.ExitError{})
	var re *Error
	if !errors.As(err, &re) || !strings.Contains(re.Msg, "executable file not found") {
		t.Fatalf("got %v, want runc's last error message", err)
	}
	if got := lastError(filepath.Join(dir, "missing")); got != "" {
		t.Fatalf("missing log gave %q", got)
	}
}

func TestMissingRuntime(t *testing.T) {
	c := NewConfig(&options.Options{BinaryName: "/nonexistent/runc"}, "ns")
	if _, err := c.LookPath(); !errors.Is(err, ErrRuntimeNotFound) {
		t.Fatalf("LookPath: %v, want ErrRuntimeNotFound", err)
	}
	err := WrapError("create", t.TempDir(), &os.PathError{Op: "fork/exec", Path: "/nonexistent/runc", Err: os.ErrNotExist})
	if !errors.Is(err, ErrRuntimeNotFound) {
		t.Fatalf("WrapError: %v, want ErrRuntimeNotFound", err)
	}
}

func TestConfigAndOptionsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	in := &options.Options{BinaryName: "crun", Root: "/run/x", SystemdCgroup: true, NoPivotRoot: true, IoUid: 5, IoGid: 6}
	if err := WriteOptions(dir, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadOptions(dir)
	if err != nil {
		t.Fatal(err)
	}
	// containerd's own shim writes and reads this file with encoding/json.
	data, err := os.ReadFile(filepath.Join(dir, optionsFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"binary_name":"crun"`) || !strings.Contains(string(data), `"systemd_cgroup":true`) {
		t.Fatalf("options.json %s: want containerd's field names", data)
	}
	c := NewConfig(out, "k8s.io")
	want := Config{Binary: "crun", Root: "/run/x/k8s.io", SystemdCgroup: true, NoPivotRoot: true, IoUID: 5, IoGID: 6, Namespace: "k8s.io"}
	if c != want {
		t.Fatalf("config %+v, want %+v", c, want)
	}
	if d := NewConfig(nil, "default"); d.Binary != DefaultBinary || d.Root != filepath.Join(DefaultRoot, "default") {
		t.Fatalf("defaults %+v", d)
	}
	if o, err := ReadOptions(t.TempDir()); o != nil || err != nil {
		t.Fatalf("missing options: %v %v", o, err)
	}
	if err := os.WriteFile(filepath.Join(dir, optionsFile), []byte("{bad"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadOptions(dir); err == nil {
		t.Fatal("malformed options.json parsed")
	}
}
