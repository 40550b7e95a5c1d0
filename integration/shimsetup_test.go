package integration

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"google.golang.org/protobuf/proto"
)

// TestConcurrentStartActions: 20 `start` actions at once for one shim
// group leave exactly one server, listening on the socket all of them
// named (none unlinked by another).
func TestConcurrentStartActions(t *testing.T) {
	te := newTestEnv(t)
	const id = "crowd"
	dir, logBuf := te.handBundle(id, minimalSpec("true"))
	s := &handShim{te: te, id: id, bundle: dir, log: logBuf}
	t.Cleanup(s.cleanup)
	params := te.bootstrapParams(id)
	addresses := make([]string, 20)
	var wg sync.WaitGroup
	for i := range addresses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := te.runShim(dir, params, te.startFlags(id)...)
			if err != nil {
				t.Errorf("start %d: %v", i, err)
				return
			}
			var res bootapi.BootstrapResult
			if err := proto.Unmarshal(out, &res); err != nil {
				t.Errorf("start %d printed %q: %v", i, out, err)
				return
			}
			addresses[i] = res.Address
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, a := range addresses[1:] {
		if a != addresses[0] {
			t.Fatalf("starts named different addresses: %v", addresses)
		}
	}
	var servers []shimProc
	for _, p := range te.h.shimProcesses() {
		if p.NS == te.ns && p.ID == id {
			servers = append(servers, p)
		}
	}
	if len(servers) != 1 {
		t.Fatalf("%d shim servers for one group, want 1: %v", len(servers), servers)
	}
	s.address = addresses[0]
	s.dial()
	if pid := int(s.connect().ShimPid); pid != servers[0].PID {
		t.Fatalf("the socket file leads to pid %d, the server is %d", pid, servers[0].PID)
	}
	checkConnectAndShutdown(t, s)
}

// TestShimOOMScore: the kernel kills a shim before containerd: the
// server's oom_score_adj is containerd's + 1.
func TestShimOOMScore(t *testing.T) {
	te := newTestEnv(t)
	te.startTask(te.container("scored", "sleep", "1000"), te.io(nil, io.Discard, io.Discard))
	read := func(pid int) int {
		t.Helper()
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	want := min(read(te.h.PID())+1, 1000)
	found := false
	for _, p := range te.h.shimProcesses() {
		if p.NS == te.ns {
			found = true
			if got := read(p.PID); got != want {
				t.Errorf("shim %d oom_score_adj %d, want containerd's + 1 = %d", p.PID, got, want)
			}
		}
	}
	if !found {
		t.Fatal("no shim process for the container")
	}
}

// TestIoUIDGID: with the runc options IoUid/IoGid the process can reopen
// its stdio as that user (it gets pipes owned by it), while containerd's
// fifos and a host file:// log keep their owner.
func TestIoUIDGID(t *testing.T) {
	te := newTestEnv(t)
	const uid = 1000
	rt := client.WithRuntime("io.containerd.runc.v2", &options.Options{IoUid: uid, IoGid: uid})
	script := "stat -L -c %u:%g /proc/self/fd/1 /proc/self/fd/2; echo reopened > /proc/self/fd/1"
	want := fmt.Sprintf("%d:%d\n%d:%d\nreopened\n", uid, uid, uid, uid)

	out := newSyncBuffer()
	c := te.containerWith("fifos", []client.NewContainerOpts{rt}, oci.WithUIDGID(uid, uid), oci.WithProcessArgs("sh", "-c", script+" 2>&1"))
	task, exitCh := te.startTask(c, te.io(nil, out, out))
	if code := te.waitExit("fifos", exitCh).ExitCode(); code != 0 {
		t.Errorf("exit status %d (output %q), want 0", code, out.String())
	}
	te.waitIO("fifos", task)
	if got := out.String(); got != want {
		t.Errorf("output %q, want %q", got, want)
	}
	for _, path := range []string{task.IO().Config().Stdout, task.IO().Config().Stderr} {
		checkOwner(t, path, 0)
	}
	if _, err := task.Delete(te.ctx); err != nil {
		t.Fatal(err)
	}

	logPath := filepath.Join(t.TempDir(), "container.log")
	c = te.containerWith("logfile", []client.NewContainerOpts{rt}, oci.WithUIDGID(uid, uid), oci.WithProcessArgs("sh", "-c", script))
	task, exitCh = te.startTask(c, cio.LogFile(logPath))
	if code := te.waitExit("logfile", exitCh).ExitCode(); code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	if _, err := task.Delete(te.ctx); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(logPath)
	if err != nil || string(data) != want {
		t.Errorf("log file holds %q, %v; want %q", data, err, want)
	}
	checkOwner(t, logPath, 0)
}

func checkOwner(t *testing.T, path string, uid uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != uid || st.Gid != uid {
		t.Errorf("%s is owned by %d:%d, want %d:%d", path, st.Uid, st.Gid, uid, uid)
	}
}
