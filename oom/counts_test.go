package oom

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseKeyed(t *testing.T) {
	v2 := "low 0\nhigh 12\nmax 7\noom 2\noom_kill 3\noom_group_kill 0\n"
	v1 := "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n"
	for _, tc := range []struct {
		name, data, key string
		want            uint64
		err             error
	}{
		{"v2 oom_kill", v2, "oom_kill", 3, nil},
		{"v2 max", v2, "max", 7, nil},
		{"v2 oom is not oom_kill", "oom 9\n", "oom_kill", 0, nil},
		{"v1 oom_kill", v1, "oom_kill", 5, nil},
		{"no trailing newline", "max 1\noom_kill 42", "oom_kill", 42, nil},
		{"old kernel without the key", "oom_kill_disable 0\nunder_oom 0\n", "oom_kill", 0, nil},
		{"empty", "", "oom_kill", 0, nil},
		{"bad value", "oom_kill x1\n", "oom_kill", 0, ErrMalformed},
		{"overflow", "oom_kill 99999999999999999999\n", "oom_kill", 0, ErrMalformed},
		{"max uint64", "oom_kill 18446744073709551615\n", "oom_kill", 18446744073709551615, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseKeyed([]byte(tc.data), tc.key)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func TestParseKeyedAllocatesNothing(t *testing.T) {
	data := []byte("low 0\nhigh 12\nmax 7\noom 2\noom_kill 3\noom_group_kill 0\n")
	if n := testing.AllocsPerRun(100, func() { parseKeyed(data, "oom_kill") }); n != 0 {
		t.Fatalf("parseKeyed allocates %v times per call", n)
	}
}

// A buffer smaller than the file must grow, never cut the oom_kill line.
func TestPreadAllGrows(t *testing.T) {
	p := filepath.Join(t.TempDir(), "memory.events")
	content := strings.Repeat("padding 0\n", 100) + "oom_kill 77\n"
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 16)
	data, err := preadAll(fd, &buf)
	if err != nil || string(data) != content {
		t.Fatalf("read %d bytes, %v", len(data), err)
	}
	if n, err := parseKeyed(data, "oom_kill"); err != nil || n != 77 {
		t.Fatalf("oom_kill %d, %v", n, err)
	}
	if n := testing.AllocsPerRun(50, func() { preadAll(fd, &buf) }); n != 0 {
		t.Fatalf("a re-read allocates %v times", n)
	}
}
