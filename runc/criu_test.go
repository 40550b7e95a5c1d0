package runc

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestStdioKeysRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if err := WriteStdioKeys(dir, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, StdioKeysFile)); !os.IsNotExist(err) {
		t.Fatalf("no keys wrote a file: %v", err)
	}
	if keys, err := ReadStdioKeys(dir); err != nil || keys != nil {
		t.Fatalf("image without the file: %v, %v", keys, err)
	}
	want := map[int]string{1: "file[1e:2a]", 2: "file[1e:2a]", 0: "file[1f:10]"}
	if err := WriteStdioKeys(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadStdioKeys(dir)
	if err != nil || len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("read back %v, %v; want %v", got, err, want)
	}
	// Shared files are one key to criu; fds in order.
	if d := DumpConfig(got); !slices.Equal(d, []string{"external file[1f:10]", "external file[1e:2a]"}) {
		t.Errorf("dump config %q", d)
	}
	if r := RestoreConfig(got); !slices.Equal(r, []string{"inherit-fd fd[0]:file[1f:10]", "inherit-fd fd[1]:file[1e:2a]"}) {
		t.Errorf("restore config %q", r)
	}
}

func TestStdioKeysRejectsBadEntries(t *testing.T) {
	for _, bad := range []string{
		`{"1":"file[1e:2a]\ninherit-fd fd[9]:x"}`,
		`{"1":"pipe:[12]"}`,
		`{"3":"file[1:2]"}`,
		`{"1":"file[zz:2]"}`,
		`{"1":"file[1:2"}`,
		`not json`,
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, StdioKeysFile), []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if keys, err := ReadStdioKeys(dir); err == nil {
			t.Errorf("%s: accepted as %v", bad, keys)
		}
	}
}

func TestWithCriuConfig(t *testing.T) {
	dir := t.TempDir()
	operator := filepath.Join(dir, "operator.conf")
	if err := os.WriteFile(operator, []byte("tcp-close\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(criuConfigEnv, operator)
	var seen string
	err := WithCriuConfig(dir, []string{"external file[1:2]"}, func() error {
		path := os.Getenv(criuConfigEnv)
		data, err := os.ReadFile(path)
		seen = string(data)
		// A child (runc, then criu) inherits it.
		out, err2 := exec.Command("sh", "-c", "echo $"+criuConfigEnv).Output()
		if err2 == nil && strings.TrimSpace(string(out)) != path {
			t.Errorf("child sees %q, want %q", out, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != "tcp-close\n\nexternal file[1:2]\n" {
		t.Errorf("config %q: want the operator's file, then ours", seen)
	}
	if got := os.Getenv(criuConfigEnv); got != operator {
		t.Errorf("after: %s=%q, want the operator's %q back", criuConfigEnv, got, operator)
	}
	if _, err := os.Stat(filepath.Join(dir, "criu-stdio.conf")); !os.IsNotExist(err) {
		t.Errorf("config file left behind: %v", err)
	}
	called := false
	if err := WithCriuConfig(dir, nil, func() error { called = true; return nil }); err != nil || !called {
		t.Errorf("no lines: %v, called %v", err, called)
	}
}

// TestExternalStdioOwnNamespace: a process whose stdio are pipes and a
// file in its own mount namespace has nothing external.
func TestExternalStdioOwnNamespace(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sleep", "10")
	cmd.Stdout = f
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	cmd.Stdin = r
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	keys, err := ExternalStdio(cmd.Process.Pid)
	if err != nil || len(keys) != 0 {
		t.Fatalf("keys %v, %v; want none", keys, err)
	}
}
