package oom

import (
	"bytes"
	"errors"
	"strconv"
	"testing"
)

// FuzzParseKeyed: the counter-file parser (v2 memory.events, v1
// memory.oom_control) never panics and agrees with a plain reading of the
// format: the first "key value" line whose key matches gives the value,
// decimal, surrounding spaces allowed; a bad value is ErrMalformed; no
// such line is 0.
func FuzzParseKeyed(f *testing.F) {
	f.Add([]byte("low 0\nhigh 0\nmax 3\noom 3\noom_kill 2\noom_group_kill 0\n"), "oom_kill")
	f.Add([]byte("oom_kill_disable 0\nunder_oom 0\noom_kill 18446744073709551615\n"), "oom_kill")
	f.Add([]byte("oom_kill 18446744073709551616\n"), "oom_kill")
	f.Add([]byte("populated 1\nfrozen 0"), "populated")
	f.Add([]byte("max -1\n"), "max")
	f.Add([]byte("oom_kill \t7 \r\n"), "oom_kill")
	f.Add([]byte("oom_kill\n \n\n"), "max")
	f.Fuzz(func(t *testing.T, data []byte, key string) {
		got, err := parseKeyed(data, key)
		want, wantErr := plainParse(data, key)
		if (err != nil) != (wantErr != nil) || got != want {
			t.Fatalf("parseKeyed(%q, %q) = %d, %v; want %d, %v", data, key, got, err, want, wantErr)
		}
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("error %v is not ErrMalformed", err)
		}
	})
}

func plainParse(data []byte, key string) (uint64, error) {
	for _, line := range bytes.Split(data, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(" "))
		if !ok || string(k) != key {
			continue
		}
		s := string(bytes.TrimSpace(v))
		if s == "" || s[0] == '+' { // ParseUint takes neither as a counter either way
			return 0, strconv.ErrSyntax
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, err
		}
		return n, nil
	}
	return 0, nil
}
