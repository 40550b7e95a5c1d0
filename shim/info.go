package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"oomshim/runc"
)

func init() {
	typeurl.Register(&features.Features{}, "types.containerd.io", "opencontainers/runtime-spec",
		strconv.Itoa(specs.VersionMajor), "features", "Features")
}

// runInfo is -info: read runc options (a protobuf Any, possibly empty) from
// stdin and print a RuntimeInfo protobuf with runc's features.
func runInfo(stdin io.Reader, stdout io.Writer) error {
	input, err := io.ReadAll(io.LimitReader(stdin, maxStdin))
	if err != nil {
		return fmt.Errorf("read stdin: %w", err)
	}
	info := &types.RuntimeInfo{
		Name:    RuntimeName,
		Version: &types.RuntimeVersion{Version: Version, Revision: Revision},
	}
	binary := runc.DefaultBinary
	if len(input) > 0 {
		var a anypb.Any
		if err := proto.Unmarshal(input, &a); err != nil {
			return fmt.Errorf("decode runtime options: %w", err)
		}
		v, err := typeurl.UnmarshalAny(&a)
		if err != nil {
			return fmt.Errorf("decode runtime options: %w", err)
		}
		opts, ok := v.(*options.Options)
		if !ok {
			return fmt.Errorf("runtime options of type %s, want containerd.runc.v1.Options", a.GetTypeUrl())
		}
		info.Options = &a
		if opts.BinaryName != "" {
			binary = opts.BinaryName
		}
	}
	path, err := exec.LookPath(binary)
	if err != nil {
		return fmt.Errorf("look up runtime %q: %w", binary, err)
	}
	if feat, err := runcFeatures(path); err == nil {
		if info.Features, err = typeurl.MarshalAnyToProto(feat); err != nil {
			return fmt.Errorf("marshal runtime features: %w", err)
		}
	}
	data, err := proto.Marshal(info)
	if err != nil {
		return err
	}
	_, err = stdout.Write(data)
	return err
}

func runcFeatures(path string) (*features.Features, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, "features")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s features: %w: %s", path, err, stderr.String())
	}
	var feat features.Features
	if err := json.Unmarshal(out, &feat); err != nil {
		return nil, err
	}
	return &feat, nil
}
