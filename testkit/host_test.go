package testkit

import "testing"

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/run/a`:             "/run/a",
		`/run/with\040space`: "/run/with space",
		`/run/tab\011x`:      "/run/tab\tx",
		`/run/back\134slash`: `/run/back\slash`,
		`/run/short\04`:      `/run/short\04`,
	} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMountsSeesRoot(t *testing.T) {
	found := false
	for _, m := range Mounts() {
		found = found || m.Point == "/"
	}
	if !found {
		t.Fatal("no / in /proc/self/mountinfo")
	}
}
