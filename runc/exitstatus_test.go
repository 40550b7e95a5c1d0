package runc

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestExitStatusRoundTrip: what WriteExitStatus records ReadExitStatus
// reads back; containerd's own shim's file (same name, go-runc's Exit as
// JSON) reads too; a missing file is os.ErrNotExist, a broken one an error.
func TestExitStatusRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadExitStatus(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no file: %v, want ErrNotExist", err)
	}
	at := time.Date(2026, 12, 2, 17, 0, 0, 123, time.UTC)
	if err := WriteExitStatus(dir, 42, 3, at); err != nil {
		t.Fatal(err)
	}
	e, err := ReadExitStatus(dir)
	if err != nil || e.Pid != 42 || e.Status != 3 || !e.Timestamp.Equal(at) {
		t.Fatalf("read %+v, %v", e, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "."+exitStatusFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left: %v", err)
	}
	for name, data := range map[string]string{
		"reference": `{"Timestamp":"2026-12-02T17:00:00Z","Pid":7,"Status":137}`,
		"garbage":   `{"Pid":`,
		"no pid":    `{"Timestamp":"2026-12-02T17:00:00Z","Pid":0,"Status":1}`,
		"no time":   `{"Pid":7,"Status":1}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, exitStatusFile), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		e, err := ReadExitStatus(dir)
		switch {
		case name == "reference" && (err != nil || e.Pid != 7 || e.Status != 137):
			t.Errorf("%s: %+v, %v", name, e, err)
		case name != "reference" && (err == nil || errors.Is(err, os.ErrNotExist)):
			t.Errorf("%s: %+v, %v; want a parse error", name, e, err)
		}
	}
}
