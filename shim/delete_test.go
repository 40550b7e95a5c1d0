package shim

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"oomshim/runc"
)

// TestDeleteActionRunsRuntimeOnlyWithState: containerd runs the delete
// action after every shim disconnect; the runtime is called only while it
// still has state for the container, and the answer is the same either way.
func TestDeleteActionRunsRuntimeOnlyWithState(t *testing.T) {
	for _, withState := range []bool{false, true} {
		t.Run(fmt.Sprintf("state=%v", withState), func(t *testing.T) {
			dir := t.TempDir()
			bundle := filepath.Join(dir, "bundle")
			root := filepath.Join(dir, "root")
			calls := filepath.Join(dir, "calls")
			fake := filepath.Join(dir, "fake-runc")
			script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\n", calls)
			if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := runc.WriteOptions(bundle, &options.Options{BinaryName: fake, Root: root}); err != nil {
				t.Fatal(err)
			}
			if withState {
				if err := os.MkdirAll(filepath.Join(root, "ns", "c1"), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			var out bytes.Buffer
			if err := runDelete(flags{id: "c1", namespace: "ns", bundle: bundle}, &out); err != nil {
				t.Fatal(err)
			}
			var resp taskapi.DeleteResponse
			if err := proto.Unmarshal(out.Bytes(), &resp); err != nil || resp.ExitStatus != 137 {
				t.Fatalf("response %v (%v), want exit status 137", &resp, err)
			}
			got, _ := os.ReadFile(calls)
			switch {
			case withState && !strings.Contains(string(got), "delete --force c1"):
				t.Fatalf("runtime calls %q, want a forced delete of c1", got)
			case !withState && len(got) > 0:
				t.Fatalf("runtime called without state: %q", got)
			}
		})
	}
}

// TestDeleteActionReportsRecordedExit: the delete action answers the exit
// the shim recorded in the bundle; without one, SIGKILL with the pid file's
// pid.
func TestDeleteActionReportsRecordedExit(t *testing.T) {
	bundle := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundle, runc.InitPidFile), []byte("99"), 0o644); err != nil {
		t.Fatal(err)
	}
	resp := deleteResponse(bundle)
	if resp.Pid != 99 || resp.ExitStatus != 137 {
		t.Fatalf("without a record: %v, want pid 99, status 137", resp)
	}
	at := time.Now().Add(-time.Minute)
	if err := runc.WriteExitStatus(bundle, 99, 3, at); err != nil {
		t.Fatal(err)
	}
	resp = deleteResponse(bundle)
	if resp.Pid != 99 || resp.ExitStatus != 3 || !resp.ExitedAt.AsTime().Equal(at) {
		t.Fatalf("with a record: %v, want pid 99, status 3 at %v", resp, at)
	}
}

// TestDeleteActionKilledCleanupFinishes: containerd SIGKILLs a delete
// action after 5 seconds, and soon after removes the bundle; a runtime
// delete that takes longer still finishes (with the runtime options the
// bundle held, and no log file in the bundle), and the rootfs is still
// unmounted, because the cleanup runs in a child of its own session.
func TestDeleteActionKilledCleanupFinishes(t *testing.T) {
	for _, removeBundle := range []bool{false, true} {
		t.Run(fmt.Sprintf("bundle_removed=%v", removeBundle), func(t *testing.T) {
			testDeleteActionKilled(t, removeBundle)
		})
	}
}

func testDeleteActionKilled(t *testing.T, removeBundle bool) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	root := filepath.Join(dir, "root")
	state := filepath.Join(root, "ns", "c1")
	calls := filepath.Join(dir, "calls")
	fake := filepath.Join(dir, "fake-runc")
	// As runc: a --log file it cannot open fails the command.
	script := fmt.Sprintf(`#!/bin/sh
echo started >> %[1]s
sleep 2
prev=
for a in "$@"; do
	if [ "$prev" = --log ] && [ ! -d "$(dirname "$a")" ]; then echo "open $a: no such file or directory" >&2; exit 1; fi
	prev=$a
done
echo "$*" >> %[1]s
rm -rf %[2]s
`, calls, state)
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(bundle, "rootfs")
	for _, d := range []string{rootfs, state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := runc.WriteOptions(bundle, &options.Options{BinaryName: fake, Root: root}); err != nil {
		t.Fatal(err)
	}
	mounted := !removeBundle && os.Geteuid() == 0 && unix.Mount("tmpfs", rootfs, "tmpfs", 0, "") == nil
	if mounted {
		t.Cleanup(func() { unix.Unmount(rootfs, unix.MNT_DETACH) })
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-namespace", "ns", "-id", "c1", "-bundle", bundle, "delete")
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after 20 s", what)
			}
		}
	}
	callsRead := func() string { b, _ := os.ReadFile(calls); return string(b) }
	waitFor("the runtime's delete started", func() bool { return strings.Contains(callsRead(), "started") })
	cmd.Process.Kill()
	cmd.Wait()
	if removeBundle {
		if err := os.RemoveAll(bundle); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("the runtime's state removed after the delete action was killed", func() bool {
		_, err := os.Stat(state)
		return errors.Is(err, os.ErrNotExist)
	})
	if got := callsRead(); !strings.Contains(got, "delete --force c1") {
		t.Fatalf("runtime calls %q, want a forced delete of c1", got)
	}
	if mounted {
		waitFor("the rootfs unmounted", func() bool {
			var st, parent unix.Stat_t
			return unix.Stat(rootfs, &st) == nil && unix.Stat(bundle, &parent) == nil && st.Dev == parent.Dev
		})
	}
}

// TestRemoveDeadSocket: the delete action removes the socket a killed shim
// left, and never the socket of a shim that still listens.
func TestRemoveDeadSocket(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	writeBootstrap := func() {
		data := fmt.Sprintf(`{"version":3,"address":"unix://%s","protocol":"ttrpc"}`, sock)
		if err := os.WriteFile(filepath.Join(bundle, "bootstrap.json"), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeBootstrap()

	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	removeDeadSocket(bundle)
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("socket of a listening shim removed: %v", err)
	}
	// A listener closed without unlinking is what a killed process leaves.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	removeDeadSocket(bundle)
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dead socket still there: %v", err)
	}
	removeDeadSocket(bundle) // gone already: nothing to do
}

// Under containerd 1.x there is no bootstrap.json: the socket is found
// through the address file the start action wrote.
func TestRemoveDeadSocketFromAddressFile(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s")
	if err := writeAddress(filepath.Join(dir, addressFile), "unix://"+sock); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	removeDeadSocket(dir)
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dead socket still there: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("want only the address file left, found %v", ents)
	}
}

// Start actions of one group write the address file at once.
func TestWriteAddressConcurrently(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, addressFile)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- writeAddress(path, "unix:///run/s/x")
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if data, err := os.ReadFile(path); err != nil || string(data) != "unix:///run/s/x" {
		t.Fatalf("address file %q, %v", data, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("want only the address file left, found %v", ents)
	}
}
