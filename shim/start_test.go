package shim

import (
	"bytes"
	"encoding/json"
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
	env := map[string]string{"TTRPC_ADDRESS": "/env/ttrpc", "GRPC_ADDRESS": "/env/grpc"}
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
			if p.bootstrap != tc.bootstrap || p.ttrpcAddress != tc.ttrpc || p.socketDir != tc.socketDir || p.debug != tc.debug {
				t.Fatalf("got %+v", p)
			}
			if got := p.options.GetBinaryName(); got != tc.binary {
				t.Fatalf("binary %q, want %q", got, tc.binary)
			}
		})
	}
}

func TestWriteStartResult(t *testing.T) {
	var b bytes.Buffer
	if err := writeStartResult(&b, false, "unix:///run/s/x"); err != nil {
		t.Fatal(err)
	}
	var legacy map[string]any
	if err := json.Unmarshal(b.Bytes(), &legacy); err != nil {
		t.Fatalf("legacy reply is not JSON: %q", b.String())
	}
	if legacy["version"] != float64(3) || legacy["address"] != "unix:///run/s/x" || legacy["protocol"] != "ttrpc" {
		t.Fatalf("legacy reply %v", legacy)
	}
	b.Reset()
	if err := writeStartResult(&b, true, "unix:///run/s/x"); err != nil {
		t.Fatal(err)
	}
	var res bootapi.BootstrapResult
	if err := proto.Unmarshal(b.Bytes(), &res); err != nil || res.Version != 3 || res.Address != "unix:///run/s/x" || res.Protocol != "ttrpc" {
		t.Fatalf("bootstrap reply %+v, %v", &res, err)
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
