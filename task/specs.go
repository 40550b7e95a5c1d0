package task

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

func init() {
	major := strconv.Itoa(specs.VersionMajor)
	// The type URLs containerd gives the JSON process spec of an exec and
	// the resources of an Update.
	typeurl.Register(&specs.Process{}, "types.containerd.io", "opencontainers/runtime-spec", major, "Process")
	typeurl.Register(&specs.LinuxResources{}, "types.containerd.io", "opencontainers/runtime-spec", major, "LinuxResources")
}

// bundleInfo is what the shim itself needs of a bundle's config.json.
type bundleInfo struct {
	// sharedPID: the container has no PID namespace of its own (pod
	// shareProcessNamespace, hostPID, or none in the spec), so its
	// processes do not die with its init.
	sharedPID bool
}

// checkBundle verifies that bundle is an absolute directory holding a
// config.json that is one JSON object with a process object, and reads
// whether the container has a PID namespace of its own. The rest is
// runc's to validate: decoding the whole OCI spec here would build and
// keep encoding/json's metadata for every spec type (about 0.2 MB) in a
// shim whose heap is otherwise never collected.
func checkBundle(bundle string) (bundleInfo, error) {
	if bundle == "" || !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle {
		return bundleInfo{}, fmt.Errorf("bundle %q must be a clean absolute path: %w", bundle, errdefs.ErrInvalidArgument)
	}
	path := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return bundleInfo{}, fmt.Errorf("bundle %s has no config.json: %w", bundle, errdefs.ErrInvalidArgument)
		}
		return bundleInfo{}, fmt.Errorf("read bundle config: %w", err)
	}
	return parseBundleConfig(data, path)
}

// parseBundleConfig is checkBundle's check of the content of config.json
// (read from path).
func parseBundleConfig(data []byte, path string) (bundleInfo, error) {
	var spec struct {
		Process json.RawMessage `json:"process"`
		Linux   *struct {
			Namespaces []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return bundleInfo{}, fmt.Errorf("malformed %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	if len(spec.Process) == 0 || spec.Process[0] != '{' {
		return bundleInfo{}, fmt.Errorf("%s has no process object: %w", path, errdefs.ErrInvalidArgument)
	}
	// As the stock shim decides it: a new PID namespace is one of type
	// pid with no path to join.
	info := bundleInfo{sharedPID: true}
	if spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == string(specs.PIDNamespace) && ns.Path == "" {
				info.sharedPID = false
			}
		}
	}
	return info, nil
}

// runtimeOptions decodes the runc options of a Create; nil means defaults.
func runtimeOptions(a *anypb.Any) (*options.Options, error) {
	if a == nil || a.GetTypeUrl() == "" {
		return nil, nil
	}
	return decodeAny[*options.Options](a, "runtime options", "containerd.runc.v1.Options")
}

// processSpec decodes an exec's OCI process spec.
func processSpec(a *anypb.Any) (*specs.Process, error) {
	if a == nil {
		return nil, fmt.Errorf("exec without a process spec: %w", errdefs.ErrInvalidArgument)
	}
	p, err := decodeAny[*specs.Process](a, "process spec", "a runtime-spec Process")
	if err != nil {
		return nil, err
	}
	if len(p.Args) == 0 && p.CommandLine == "" {
		return nil, fmt.Errorf("process spec has no args: %w", errdefs.ErrInvalidArgument)
	}
	return p, nil
}

// linuxResources decodes the resources of an Update.
func linuxResources(a *anypb.Any) (*specs.LinuxResources, error) {
	if a == nil || a.GetTypeUrl() == "" {
		return nil, fmt.Errorf("update without resources: %w", errdefs.ErrInvalidArgument)
	}
	return decodeAny[*specs.LinuxResources](a, "resources", "a runtime-spec LinuxResources")
}

// decodeAny decodes a into the type registered for its URL, which must be
// T; anything else is InvalidArgument.
func decodeAny[T any](a *anypb.Any, what, want string) (T, error) {
	var zero T
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return zero, fmt.Errorf("decode %s: %v: %w", what, err, errdefs.ErrInvalidArgument)
	}
	t, ok := v.(T)
	if !ok {
		return zero, fmt.Errorf("%s of type %s, want %s: %w", what, a.GetTypeUrl(), want, errdefs.ErrInvalidArgument)
	}
	return t, nil
}
