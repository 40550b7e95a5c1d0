package task

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

func TestCheckBundle(t *testing.T) {
	for _, tc := range []struct {
		name, config  string
		ok, sharedPID bool
	}{
		{"process", `{"ociVersion":"1.2.0","process":{"args":["sh"]},"linux":{"resources":{}}}`, true, true},
		{"own pid namespace", `{"process":{},"linux":{"namespaces":[{"type":"mount"},{"type":"pid"}]}}`, true, false},
		{"pod's pid namespace", `{"process":{},"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}`, true, true},
		{"host pid", `{"process":{},"linux":{"namespaces":[{"type":"mount"}]}}`, true, true},
		{"not json", `{"process": {`, false, false},
		{"not an object", `[1]`, false, false},
		{"no process", `{"ociVersion":"1.2.0"}`, false, false},
		{"null process", `{"process":null}`, false, false},
		{"process not an object", `{"process":"sh"}`, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			info, err := checkBundle(dir)
			if tc.ok && err != nil {
				t.Fatalf("checkBundle: %v", err)
			}
			if tc.ok && info.sharedPID != tc.sharedPID {
				t.Fatalf("sharedPID %v, want %v", info.sharedPID, tc.sharedPID)
			}
			if !tc.ok && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("checkBundle: %v, want InvalidArgument", err)
			}
		})
	}
	for _, bundle := range []string{"", "rel/dir", "/a/../b", filepath.Join(t.TempDir(), "none")} {
		if _, err := checkBundle(bundle); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("checkBundle(%q): %v, want InvalidArgument", bundle, err)
		}
	}
}
