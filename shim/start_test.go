package shim

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
)

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseStartInput(t *testing.T) {
	opts := &options.Options{BinaryName: "runc-x", ShimCgroup: "/shim"}
	any, err := typeurl.MarshalAnyToProto(opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := "/run/s"
	boot := &bootapi.BootstrapParams{
		InstanceID: "c1", Namespace: "ns", ContainerdTtrpcAddress: "/run/c.ttrpc",
		ContainerdGrpcAddress: "/run/c.sock", SocketDir: &dir, LogLevel: bootapi.LogLevel_LOG_LEVEL_DEBUG,
	}
	if err := boot.AddExtension(any); err != nil {
		t.Fatal(err)
	}
	other := proto.Clone(boot).(*bootapi.BootstrapParams)
	other.InstanceID = "someone-else"
	env := map[string]string{"TTRPC_ADDRESS": "/env/ttrpc", "GRPC_ADDRESS": "/env/grpc", "MAX_SHIM_VERSION": "2"}
	f := flags{id: "c1", namespace: "ns"}

	for _, tc := range []struct {
		name      string
		input     []byte
		bootstrap bool
		ttrpc     string
		socketDir string
		binary    string
		debug     bool
		wantErr   bool
	}{
		{"bootstrap", mustMarshal(t, boot), true, "/run/c.ttrpc", "/run/s", "runc-x", true, false},
		{"legacy options", mustMarshal(t, any), false, "/env/ttrpc", "", "runc-x", false, false},
		{"legacy empty", nil, false, "/env/ttrpc", "", "", false, false},
		{"bootstrap for another id is not ours", mustMarshal(t, other), false, "", "", "", false, true},
		{"garbage", []byte("\xff\xff\xff"), false, "", "", "", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := parseStartInput(tc.input, f, func(k string) string { return env[k] })
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want an error, got %+v", p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (p.reply == replyBootstrap) != tc.bootstrap || p.ttrpcAddress != tc.ttrpc || p.socketDir != tc.socketDir || p.debug != tc.debug {
				t.Fatalf("got %+v", p)
			}
			if got := p.options.GetBinaryName(); got != tc.binary {
				t.Fatalf("binary %q, want %q", got, tc.binary)
			}
		})
	}
}

func TestWriteStartResult(t *testing.T) {
	for _, tc := range []struct {
		r       reply
		version float64
	}{{replyJSON3, 3}, {replyJSON2, 2}} {
		var b bytes.Buffer
		if err := writeStartResult(&b, tc.r, "unix:///run/s/x"); err != nil {
			t.Fatal(err)
		}
		var legacy map[string]any
		if err := json.Unmarshal(b.Bytes(), &legacy); err != nil {
			t.Fatalf("JSON reply is not JSON: %q", b.String())
		}
		if legacy["version"] != tc.version || legacy["address"] != "unix:///run/s/x" || legacy["protocol"] != "ttrpc" {
			t.Fatalf("JSON reply %v, want version %v", legacy, tc.version)
		}
	}
	var b bytes.Buffer
	if err := writeStartResult(&b, replyPlain, "unix:///run/s/x"); err != nil {
		t.Fatal(err)
	}
	if b.String() != "unix:///run/s/x" {
		t.Fatalf("plain reply %q", b.String())
	}
	b.Reset()
	if err := writeStartResult(&b, replyBootstrap, "unix:///run/s/x"); err != nil {
		t.Fatal(err)
	}
	var res bootapi.BootstrapResult
	if err := proto.Unmarshal(b.Bytes(), &res); err != nil || res.Version != 3 || res.Address != "unix:///run/s/x" || res.Protocol != "ttrpc" {
		t.Fatalf("bootstrap reply %+v, %v", &res, err)
	}
}

// Which containerd is calling decides the reply: 1.6 (no
// MAX_SHIM_VERSION) a plain address, a containerd 2 binary version 3,
// 1.7 and any binary that cannot be read version 2.
func TestLegacyReply(t *testing.T) {
	for _, tc := range []struct {
		max, module string
		want        reply
	}{
		{"", "github.com/containerd/containerd", replyPlain},
		{"", "", replyPlain},
		{"2", "github.com/containerd/containerd/v2", replyJSON3},
		{"2", "github.com/containerd/containerd", replyJSON2},
		{"2", "", replyJSON2},
	} {
		if got := legacyReply(tc.max, tc.module); got != tc.want {
			t.Errorf("legacyReply(%q, %q) = %d, want %d", tc.max, tc.module, got, tc.want)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if m := moduleOf(self); m == "" {
		t.Errorf("no module read from %s", self)
	}
	for _, bad := range []string{"", "/nonexistent", "/etc/hostname"} {
		if m := moduleOf(bad); m != "" {
			t.Errorf("moduleOf(%q) = %q", bad, m)
		}
	}
}

func TestSocketAddress(t *testing.T) {
	a := socketAddress("/run/containerd/s", "/run/containerd/containerd.sock", "k8s.io", "pod1")
	if !strings.HasPrefix(a, "unix:///run/containerd/s/") || len(socketPath(a)) != len("/run/containerd/s/")+64 {
		t.Fatalf("address %q", a)
	}
	if a != socketAddress("/run/containerd/s", "/run/containerd/containerd.sock", "k8s.io", "pod1") {
		t.Fatal("address is not stable")
	}
	if a == socketAddress("/run/containerd/s", "/run/containerd/containerd.sock", "k8s.io", "pod2") {
		t.Fatal("two groups share an address")
	}
}

func TestIsSliceUnit(t *testing.T) {
	for s, want := range map[string]bool{
		"shims.slice":           true,
		"kubepods-shims.slice":  true,
		"/shims":                false,
		"/system.slice/x.slice": false, // a cgroupfs path, as the stock shim takes it
		".slice":                false,
		"shims":                 false,
		"":                      false,
	} {
		if got := isSliceUnit(s); got != want {
			t.Errorf("isSliceUnit(%q) = %v, want %v", s, got, want)
		}
	}
	if got := shimScope("c1", 42); got != "containerd-shim-c1-42.scope" {
		t.Errorf("shimScope = %q", got)
	}
}
