package runc

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// External stdio for criu.
//
// The shim hands a container's init containerd's fifos (or a file://
// target, or the shim's /dev/null) directly as stdio, opened in the
// shim's mount namespace. criu dumps an open file by its mount, and those
// mounts are not in the container: its dump fails with "Can't lookup
// mount". (containerd's own shim gives every container pipes and copies
// them, which runc maps back itself.) So Checkpoint names each such
// descriptor to criu as an external file (`external file[mnt:ino]`) and
// records which of fds 0-2 it was in the image (StdioKeysFile); restore
// hands criu the new task's stdio for those keys (`inherit-fd fd[N]:key`),
// and the restored process writes into the new task's fifos.
//
// runc has no flag for either, and its criu options come from the RPC
// request and config files: the shim passes them in a config file named by
// CRIU_CONFIG_FILE in runc's environment (criu swrk, started by runc,
// inherits it and reads it before runc's own configuration file, so an
// org.criu.config annotation or /etc/criu/runc.conf still applies).

// StdioKeysFile, in a checkpoint image, maps the init's fds 0-2 that were
// external files at the dump to their criu keys.
const StdioKeysFile = "stdio-external.json"

// ExternalStdio returns criu's external-file keys of pid's fds 0-2 that
// criu cannot dump: files on a mount outside the process's mount
// namespace. Pipes, sockets and the container's own files (its terminal
// among them) are left to runc and criu.
func ExternalStdio(pid int) (map[int]string, error) {
	mounts, err := mountIDs(pid)
	if err != nil {
		return nil, err
	}
	keys := map[int]string{}
	for fd := 0; fd <= 2; fd++ {
		link := fmt.Sprintf("/proc/%d/fd/%d", pid, fd)
		target, err := os.Readlink(link)
		if errors.Is(err, os.ErrNotExist) {
			continue // closed
		}
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(target, "/") {
			continue // pipe:[ino], socket:[ino], anon_inode:...
		}
		mnt, err := fdMountID(pid, fd)
		if err != nil {
			return nil, err
		}
		if mounts[mnt] {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(link, &st); err != nil {
			return nil, fmt.Errorf("stat fd %d of %d: %w", fd, pid, err)
		}
		keys[fd] = fmt.Sprintf("file[%x:%x]", mnt, st.Ino)
	}
	return keys, nil
}

// mountIDs is the set of mount ids in pid's mount namespace.
func mountIDs(pid int) (map[int]bool, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ids := map[int]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		field, _, _ := strings.Cut(sc.Text(), " ")
		if id, err := strconv.Atoi(field); err == nil {
			ids[id] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo of %d: %w", pid, err)
	}
	return ids, nil
}

// fdMountID reads the mnt_id line of /proc/pid/fdinfo/fd.
func fdMountID(pid, fd int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "mnt_id:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no mnt_id in fdinfo %d of %d", fd, pid)
}

// WriteStdioKeys records keys in the image directory.
func WriteStdioKeys(image string, keys map[int]string) error {
	if len(keys) == 0 {
		return nil
	}
	data, err := json.Marshal(keys)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(image, StdioKeysFile), data, 0o600)
}

// ReadStdioKeys reads what WriteStdioKeys recorded; an image without the
// file (made by another shim, whose stdio were pipes) has none.
func ReadStdioKeys(image string) (map[int]string, error) {
	data, err := os.ReadFile(filepath.Join(image, StdioKeysFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	keys := map[int]string{}
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, fmt.Errorf("checkpoint image %s: %w", StdioKeysFile, err)
	}
	for fd, key := range keys {
		if fd < 0 || fd > 2 || !validKey(key) {
			return nil, fmt.Errorf("checkpoint image %s: bad entry %d: %q", StdioKeysFile, fd, key)
		}
	}
	return keys, nil
}

// validKey accepts file[<hex>:<hex>] only: the key goes into a criu
// configuration file.
func validKey(key string) bool {
	inner, ok := strings.CutPrefix(key, "file[")
	if !ok {
		return false
	}
	inner, ok = strings.CutSuffix(inner, "]")
	if !ok {
		return false
	}
	mnt, ino, ok := strings.Cut(inner, ":")
	if !ok {
		return false
	}
	_, err1 := strconv.ParseUint(mnt, 16, 32)
	_, err2 := strconv.ParseUint(ino, 16, 64)
	return err1 == nil && err2 == nil
}

// DumpConfig is the criu configuration that marks keys external at a dump.
func DumpConfig(keys map[int]string) []string {
	return eachFile(keys, func(_ int, key string) string { return "external " + key })
}

// RestoreConfig is the criu configuration that gives the restored process
// criu's fd N (runc's stdio N: the new task's) for each key.
func RestoreConfig(keys map[int]string) []string {
	return eachFile(keys, func(fd int, key string) string { return fmt.Sprintf("inherit-fd fd[%d]:%s", fd, key) })
}

// eachFile returns line(fd, key) for each file of keys, by fd. A file
// shared by several fds at the dump is one file to criu: the first fd
// stands for it.
func eachFile(keys map[int]string, line func(fd int, key string) string) []string {
	var lines []string
	seen := map[string]bool{}
	for fd := 0; fd <= 2; fd++ {
		if k, ok := keys[fd]; ok && !seen[k] {
			seen[k] = true
			lines = append(lines, line(fd, k))
		}
	}
	return lines
}

// criuEnv serializes the runc commands that carry a CRIU_CONFIG_FILE: the
// variable is the shim's own environment, which go-runc passes to runc.
var criuEnv sync.Mutex

const criuConfigEnv = "CRIU_CONFIG_FILE"

// WithCriuConfig runs fn (a runc checkpoint or restore) with lines as a
// criu configuration file in dir; with no lines it just runs fn.
func WithCriuConfig(dir string, lines []string, fn func() error) error {
	if len(lines) == 0 {
		return fn()
	}
	criuEnv.Lock()
	defer criuEnv.Unlock()
	old, had := os.LookupEnv(criuConfigEnv)
	if had {
		// The operator's own file comes first (the shim's lines are
		// needed as they are).
		if data, err := os.ReadFile(old); err == nil {
			lines = append([]string{string(data)}, lines...)
		}
	}
	path := filepath.Join(dir, "criu-stdio.conf")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("criu configuration: %w", err)
	}
	defer os.Remove(path)
	if err := os.Setenv(criuConfigEnv, path); err != nil {
		return err
	}
	defer func() {
		if had {
			os.Setenv(criuConfigEnv, old)
		} else {
			os.Unsetenv(criuConfigEnv)
		}
	}()
	return fn()
}
