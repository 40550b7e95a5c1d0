package shim

import (
	"io"
	"strings"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
)

// FuzzParseStartInput: what containerd writes to the start action's stdin
// (a BootstrapParams protobuf, a legacy options Any, or nothing) and the
// environment never panic the parse; bootstrap params are taken only when
// they name the command line's instance and namespace.
func FuzzParseStartInput(f *testing.F) {
	opts := &options.Options{BinaryName: "runc", SystemdCgroup: true}
	a, err := typeurl.MarshalAnyToProto(opts)
	if err != nil {
		f.Fatal(err)
	}
	legacy, _ := proto.Marshal(a)
	dir := "/run/s"
	boot := &bootapi.BootstrapParams{InstanceID: "c1", Namespace: "ns", ContainerdTtrpcAddress: "/run/c.ttrpc",
		ContainerdGrpcAddress: "/run/c.sock", SocketDir: &dir, LogLevel: bootapi.LogLevel_LOG_LEVEL_INFO}
	if err := boot.AddExtension(a); err != nil {
		f.Fatal(err)
	}
	bootstrap, _ := proto.Marshal(boot)
	f.Add(bootstrap, "/env/ttrpc", "/env/grpc")
	f.Add(legacy, "/env/ttrpc", "")
	f.Add([]byte{}, "", "")
	f.Add([]byte("\xff\xff\xff"), "x", "y")
	fl := flags{id: "c1", namespace: "ns"}
	f.Fuzz(func(t *testing.T, input []byte, ttrpc, grpc string) {
		env := map[string]string{"TTRPC_ADDRESS": ttrpc, "GRPC_ADDRESS": grpc}
		p, err := parseStartInput(input, fl, func(k string) string { return env[k] })
		if err != nil || p.reply != replyBootstrap {
			return
		}
		var bp bootapi.BootstrapParams
		if proto.Unmarshal(input, &bp) != nil || bp.InstanceID != fl.id || bp.Namespace != fl.namespace {
			t.Fatalf("input %q taken as bootstrap params of another instance", input)
		}
	})
}

// FuzzParseFlags: any command line (arguments joined by NUL) parses or
// fails without a panic.
func FuzzParseFlags(f *testing.F) {
	f.Add("-namespace\x00k8s.io\x00-id\x00c1\x00-address\x00/run/containerd/containerd.sock\x00start")
	f.Add("-debug=maybe")
	f.Add("-v")
	f.Add("--\x00-x")
	f.Fuzz(func(t *testing.T, joined string) {
		args := append([]string{"containerd-shim-runc-v2"}, strings.Split(joined, "\x00")...)
		parseFlags(args, io.Discard)
	})
}
