package oom

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrMalformed is returned for a counter file the parser does not accept.
var ErrMalformed = errors.New("oom: malformed counter file")

// Counts are the counters the watcher follows in one memory cgroup.
type Counts struct {
	// OOMKill counts processes the OOM killer killed in the cgroup
	// (v2 memory.events oom_kill, v1 memory.oom_control oom_kill).
	OOMKill uint64
	// Max counts hits of the cgroup's own limit (v2 memory.events max;
	// 0 on v1, where the peak usage tells instead). If OOMKill rises while
	// Max does not, the limit that fired was an ancestor's (pod-level).
	Max uint64
}

// parseKeyed finds the value of key in a "key value\n" file: v2
// memory.events or v1 memory.oom_control. A missing key is 0 (older
// kernels lack oom_kill); a key present with a bad value is an error.
func parseKeyed(data []byte, key string) (uint64, error) {
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		k, v, ok := bytes.Cut(line, []byte{' '})
		if !ok || string(k) != key { // no allocation: compared, not converted
			continue
		}
		n, err := parseUint(bytes.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf("%w: %s %q", ErrMalformed, key, v)
		}
		return n, nil
	}
	return 0, nil
}

// parseUint parses a decimal counter without allocating. Leading zeros
// do not count against the 20 digits of a uint64 (found by fuzzing).
func parseUint(b []byte) (uint64, error) {
	for len(b) > 1 && b[0] == '0' {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 20 {
		return 0, strconv.ErrSyntax
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, strconv.ErrSyntax
		}
		d := uint64(c - '0')
		if n > (^uint64(0)-d)/10 {
			return 0, strconv.ErrRange
		}
		n = n*10 + d
	}
	return n, nil
}

// preadAll reads the whole file behind fd from offset 0 into *buf, growing
// it when the file does not fit, so that no line is ever cut off. kernfs
// regenerates the content on every read from offset 0. The buffer is reused
// across calls: a wakeup allocates nothing.
func preadAll(fd int, buf *[]byte) ([]byte, error) {
	for {
		n, err := unix.Pread(fd, *buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n < len(*buf) {
			return (*buf)[:n], nil
		}
		*buf = make([]byte, 2*len(*buf))
	}
}

// isGone reports whether err means the cgroup no longer exists.
func isGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}
