package task

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

func TestCheckBundle(t *testing.T) {
	for _, tc := range []struct {
		name, config string
		ok           bool
	}{
		{"process", `{"ociVersion":"1.2.0","process":{"args":["sh"]},"linux":{"resources":{}}}`, true},
		{"not json", `{"process": {`, false},
		{"not an object", `[1]`, false},
		{"no process", `{"ociVersion":"1.2.0"}`, false},
		{"null process", `{"process":null}`, false},
		{"process not an object", `{"process":"sh"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			err := checkBundle(dir)
			if tc.ok && err != nil {
				t.Fatalf("checkBundle: %v", err)
			}
			if !tc.ok && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("checkBundle: %v, want InvalidArgument", err)
			}
		})
	}
	for _, bundle := range []string{"", "rel/dir", "/a/../b", filepath.Join(t.TempDir(), "none")} {
		if err := checkBundle(bundle); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("checkBundle(%q): %v, want InvalidArgument", bundle, err)
		}
	}
}
