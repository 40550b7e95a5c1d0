package shim

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
)

// dialEnv makes the test binary a ttrpc client of the socket it names
// (see TestMain): it prints "ok" if a Connect call was answered.
const dialEnv = "SHIM_TEST_DIAL"

// mainEnv makes the test binary the shim's command line (Main); so does
// the cleanup action's name as the last argument, for the delete action's
// child started with os.Executable().
const mainEnv = "SHIM_TEST_MAIN"

func TestMain(m *testing.M) {
	if path := os.Getenv(dialEnv); path != "" {
		os.Exit(dialAndConnect(path))
	}
	if os.Getenv(mainEnv) != "" || os.Args[len(os.Args)-1] == cleanupAction {
		os.Exit(Main(os.Args))
	}
	os.Exit(m.Run())
}

func dialAndConnect(path string) int {
	conn, err := net.Dial("unix", path)
	if err != nil {
		os.Stdout.WriteString("dial: " + err.Error())
		return 0
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	if _, err := taskapi.NewTTRPCTaskClient(c).Connect(context.Background(), &taskapi.ConnectRequest{}); err != nil {
		os.Stdout.WriteString("connect: " + err.Error())
		return 0
	}
	os.Stdout.WriteString("ok")
	return 0
}

// Of 20 concurrent binds of one address exactly one gets the socket; the
// others find it live.
func TestBindSocketOnce(t *testing.T) {
	address := "unix://" + filepath.Join(t.TempDir(), "s", "shim")
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		listeners []*net.UnixListener
		existing  int
	)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, ex, err := bindSocket(address)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Error(err)
			case ex:
				existing++
			default:
				listeners = append(listeners, l)
			}
		}()
	}
	wg.Wait()
	for _, l := range listeners {
		defer l.Close()
	}
	if len(listeners) != 1 || existing != 19 {
		t.Fatalf("%d binds got the socket, %d found it live; want 1 and 19", len(listeners), existing)
	}
	if fi, err := os.Stat(socketPath(address)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket file: %v, %v; want mode 0600", fi, err)
	}
}

// A stale socket (its server died without removing it) is replaced.
func TestBindSocketReplacesStale(t *testing.T) {
	address := "unix://" + filepath.Join(t.TempDir(), "shim")
	old, err := listenUnix(socketPath(address))
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close() // the file stays, nothing listens
	l, existing, err := bindSocket(address)
	if err != nil || existing {
		t.Fatalf("bind over a stale socket: existing %v, %v", existing, err)
	}
	defer l.Close()
	if !canConnect(address) {
		t.Fatal("the new socket does not accept connections")
	}
}

// The server removes its socket file at exit only while it is its own.
func TestServerSocketRemovesOnlyItsOwn(t *testing.T) {
	t.Setenv(listenFdEnv, "")
	address := "unix://" + filepath.Join(t.TempDir(), "shim")
	s, err := serverListener(address)
	if err != nil {
		t.Fatal(err)
	}
	// Another server replaced the file meanwhile.
	if err := os.Remove(s.path); err != nil {
		t.Fatal(err)
	}
	other, err := listenUnix(s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	s.Close()
	s.remove()
	if !canConnect(address) {
		t.Fatal("the exiting server removed another server's socket")
	}
	other.Close()
	if _, err := os.Stat(s.path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after the other server closed: %v", err)
	}
}

// The server answers only peers with its own uid.
func TestServerRequiresSameUser(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("REQUIRE_INTEGRATION") == "1" {
			t.Fatal("needs root to dial as another user")
		}
		t.Skip("needs root to dial as another user")
	}
	// Reachable by the other user: the directories, the socket, and a
	// copy of this test binary to run as the client.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	client := filepath.Join(dir, "client")
	if err := os.WriteFile(client, self, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "shim")
	l, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o777); err != nil { // let the other user reach the handshake
		t.Fatal(err)
	}
	server, err := newTTRPCServer()
	if err != nil {
		t.Fatal(err)
	}
	taskapi.RegisterTTRPCTaskService(server, connectOnly{})
	go server.Serve(context.Background(), l)
	defer server.Close()

	dial := func(uid uint32) string {
		t.Helper()
		cmd := exec.Command(client, "-test.run=^$")
		cmd.Env = append(os.Environ(), dialEnv+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("client as uid %d: %v", uid, err)
		}
		return string(out)
	}
	if got := dial(0); got != "ok" {
		t.Fatalf("client with the server's uid: %s", got)
	}
	if got := dial(65534); got == "ok" || !strings.HasPrefix(got, "connect: ") {
		t.Fatalf("client as uid 65534: %q, want its call refused", got)
	}
}

type connectOnly struct{ taskapi.TTRPCTaskService }

func (connectOnly) Connect(context.Context, *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	return &taskapi.ConnectResponse{}, nil
}

// The server's oom_score_adj is containerd's + 1, at most 1000.
func TestAdjustOOMScore(t *testing.T) {
	self, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		t.Fatal(err)
	}
	want, err := strconv.Atoi(strings.TrimSpace(string(self)))
	if err != nil {
		t.Fatal(err)
	}
	want = min(want+1, 1000)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	if err := adjustOOMScore(os.Getpid(), cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/oom_score_adj")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != strconv.Itoa(want) {
		t.Fatalf("oom_score_adj %s, want %d", got, want)
	}
}
