package task

import (
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

// The parsers of what containerd sends: each never panics, and each
// refusal is InvalidArgument.

func mustAny(f *testing.F, v any) *anypb.Any {
	f.Helper()
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		f.Fatal(err)
	}
	return a
}

func expectInvalid(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && !errdefs.IsInvalidArgument(err) {
		t.Fatalf("%s: %v is not InvalidArgument", what, err)
	}
}

// FuzzRuntimeOptions: Create's runc options, any type URL and bytes.
func FuzzRuntimeOptions(f *testing.F) {
	opts := mustAny(f, &options.Options{BinaryName: "runc", SystemdCgroup: true, ShimCgroup: "shims.slice", IoUid: 1000})
	f.Add(opts.GetTypeUrl(), opts.GetValue())
	proc := mustAny(f, &specs.Process{Args: []string{"true"}})
	f.Add(proc.GetTypeUrl(), proc.GetValue())
	f.Add("containerd.runc.v1.Options", []byte{0xff, 0x01})
	f.Add("", []byte("x"))
	f.Fuzz(func(t *testing.T, url string, value []byte) {
		o, err := runtimeOptions(&anypb.Any{TypeUrl: url, Value: value})
		expectInvalid(t, "runtime options", err)
		if err == nil && url != "" && o == nil {
			t.Fatalf("options of type %q decoded to nothing", url)
		}
	})
}

// FuzzProcessSpec: an exec's process spec (JSON in an Any).
func FuzzProcessSpec(f *testing.F) {
	proc := mustAny(f, &specs.Process{Args: []string{"sh", "-c", "true"}, Cwd: "/", Env: []string{"A=b"}, Terminal: true})
	f.Add(proc.GetValue())
	f.Add([]byte(`{"args":[]}`))
	f.Add([]byte(`{"args":null,"commandLine":"x"}`))
	f.Add([]byte(`{"user":{"uid":-1}}`))
	f.Add([]byte(`[]`))
	url := proc.GetTypeUrl()
	f.Fuzz(func(t *testing.T, value []byte) {
		p, err := processSpec(&anypb.Any{TypeUrl: url, Value: value})
		expectInvalid(t, "process spec", err)
		if err == nil && len(p.Args) == 0 && p.CommandLine == "" {
			t.Fatalf("process spec %q with nothing to run was accepted", value)
		}
	})
}

// FuzzLinuxResources: Update's resources (JSON in an Any).
func FuzzLinuxResources(f *testing.F) {
	limit := int64(20 << 20)
	res := mustAny(f, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})
	f.Add(res.GetValue())
	f.Add([]byte(`{"memory":{"limit":-1},"cpu":{"shares":18446744073709551615}}`))
	f.Add([]byte(`{"pids":{"limit":"x"}}`))
	f.Add([]byte(`null`))
	url := res.GetTypeUrl()
	f.Fuzz(func(t *testing.T, value []byte) {
		_, err := linuxResources(&anypb.Any{TypeUrl: url, Value: value})
		expectInvalid(t, "resources", err)
	})
}

// FuzzBundleConfig: the check of config.json.
func FuzzBundleConfig(f *testing.F) {
	f.Add([]byte(`{"ociVersion":"1.2.0","process":{"args":["sh"]},"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"}]}}`))
	f.Add([]byte(`{"process":{},"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}`))
	f.Add([]byte(`{"process":null}`))
	f.Add([]byte(`{"process":{},"linux":null}`))
	f.Add([]byte(`{"process":{},"linux":{"namespaces":"x"}}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := parseBundleConfig(data, "/bundle/config.json")
		expectInvalid(t, "config.json", err)
	})
}

// FuzzValidateID: an accepted ID can name a directory and a runc
// container and leave neither: no separator, no dot-dot, no space or
// control character, at most 76 bytes.
func FuzzValidateID(f *testing.F) {
	for _, id := range []string{"c1", "a.b-c_d", "..", "../x", "a/b", "", strings.Repeat("x", 77), "x\x00", "é"} {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := validateID("container", id)
		expectInvalid(t, "id", err)
		if err != nil {
			return
		}
		if id == "" || len(id) > maxIDLength || strings.ContainsAny(id, "/\\ \t\n\x00") || strings.Contains(id, "..") ||
			id[0] == '.' || id[0] == '-' {
			t.Fatalf("id %q was accepted", id)
		}
		for _, r := range id {
			if r < 0x20 || r > 0x7e {
				t.Fatalf("id %q with %q was accepted", id, r)
			}
		}
	})
}
