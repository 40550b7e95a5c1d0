// Command criimages writes, as one OCI image-layout directory, stand-ins
// for every image cri-tools' critest v1.37.0 pulls, so that critest runs
// with no registry but the loopback one (cmd/criregistry) serving them.
//
//	criimages -busybox /path/to/busybox -standin /path/to/standin -out DIR
//
// busybox is Debian's dynamically linked busybox (its libraries from ldd
// go in too): unlike the static build, whose shell runs applets in its own
// process, each applet runs as a program of its own, as in the real image.
// standin is cmd/standin, installed as pause, nginx, httpd and nonewprivs.
// Every manifest is recorded in index.json with its full reference in the
// io.containerd.image.name and org.opencontainers.image.ref.name
// annotations. The output is deterministic for the same inputs.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"

	e2e     = "registry.k8s.io/e2e-test-images/"
	staging = "gcr.io/k8s-staging-cri-tools/"
	path    = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    map[string]string `json:"platform,omitempty"`
}

// layout collects blobs and index entries.
type layout struct {
	dir       string
	manifests []descriptor
}

func (l *layout) blob(mediaType string, data []byte) (descriptor, error) {
	sum := sha256.Sum256(data)
	h := hex.EncodeToString(sum[:])
	d := descriptor{MediaType: mediaType, Digest: "sha256:" + h, Size: int64(len(data))}
	return d, os.WriteFile(filepath.Join(l.dir, "blobs", "sha256", h), data, 0o644)
}

// layer is one image layer: its compressed blob and its diff ID.
type layer struct {
	desc   descriptor
	diffID string
}

func (l *layout) layer(tarData []byte) (layer, error) {
	sum := sha256.Sum256(tarData)
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return layer{}, err
	}
	zw.Write(tarData)
	if err := zw.Close(); err != nil {
		return layer{}, err
	}
	d, err := l.blob(mediaTypeLayer, buf.Bytes())
	return layer{desc: d, diffID: "sha256:" + hex.EncodeToString(sum[:])}, err
}

// image writes one image of layers and config under every name in names.
func (l *layout) image(names []string, layers []layer, config map[string]any) error {
	diffIDs := make([]string, len(layers))
	descs := make([]descriptor, len(layers))
	for i, ly := range layers {
		diffIDs[i], descs[i] = ly.diffID, ly.desc
	}
	if _, ok := config["Env"]; !ok {
		config["Env"] = []string{path}
	}
	cfg, err := json.Marshal(map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       config,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		return err
	}
	cfgDesc, err := l.blob(mediaTypeConfig, cfg)
	if err != nil {
		return err
	}
	man, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        cfgDesc,
		"layers":        descs,
	})
	if err != nil {
		return err
	}
	manDesc, err := l.blob(mediaTypeManifest, man)
	if err != nil {
		return err
	}
	for _, n := range names {
		d := manDesc
		d.Annotations = map[string]string{"io.containerd.image.name": n, "org.opencontainers.image.ref.name": n}
		d.Platform = map[string]string{"architecture": runtime.GOARCH, "os": "linux"}
		l.manifests = append(l.manifests, d)
	}
	return nil
}

func (l *layout) finish() error {
	index, err := json.MarshalIndent(map[string]any{"schemaVersion": 2, "mediaType": mediaTypeIndex, "manifests": l.manifests}, "", " ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(l.dir, "index.json"), index, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(l.dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
}

// tarball builds a layer's tar.
type tarball struct {
	buf  bytes.Buffer
	tw   *tar.Writer
	dirs map[string]bool
}

func newTarball() *tarball {
	t := &tarball{dirs: map[string]bool{}}
	t.tw = tar.NewWriter(&t.buf)
	return t
}

func (t *tarball) dir(name string, mode int64) {
	if t.dirs[name] {
		return
	}
	if parent := filepath.Dir(name); parent != "." && parent != "/" {
		t.dir(parent, 0o755)
	}
	t.dirs[name] = true
	t.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch})
}

func (t *tarball) file(name string, mode int64, data []byte) {
	t.dir(filepath.Dir(name), 0o755)
	t.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch})
	t.tw.Write(data)
}

func (t *tarball) link(name, target string, typ byte) {
	t.dir(filepath.Dir(name), 0o755)
	t.tw.WriteHeader(&tar.Header{Typeflag: typ, Name: name, Linkname: target, Mode: 0o777, ModTime: epoch})
}

func (t *tarball) bytes() ([]byte, error) {
	if err := t.tw.Close(); err != nil {
		return nil, err
	}
	return t.buf.Bytes(), nil
}

const (
	passwd = "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	group  = "root:x:0:\nwww-data:x:33:\nnobody:x:65534:\n"
	// pgrep and ipcs are not in Debian's busybox; these print what
	// critest reads of them.
	pgrep = `#!/bin/sh
# pgrep NAME: the pids whose command name is NAME.
found=1
for d in /proc/[0-9]*; do
	read -r comm < "$d/comm" 2>/dev/null || continue
	if [ "$comm" = "$1" ]; then echo "${d#/proc/}"; found=0; fi
done
exit $found
`
	ipcs = `#!/bin/sh
# ipcs -m: the System V shared memory segments of this IPC namespace.
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
tail -n +2 /proc/sysvipc/shm | while read -r key shmid perms size cpid lpid nattch rest; do
	printf '0x%08x %-10s %-10s %-10s %-10s %-10s\n' "$key" "$shmid" root "$perms" "$size" "$nattch"
done
`
)

// baseLayer: busybox with its libraries, every applet hard-linked, the
// directories a runtime mounts over, /etc and the pgrep/ipcs stand-ins.
func baseLayer(busybox string) ([]byte, error) {
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, err)
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	libs, err := libraries(busybox)
	if err != nil {
		return nil, err
	}
	t := newTarball()
	for _, d := range []struct {
		name string
		mode int64
	}{{"bin", 0o755}, {"dev", 0o755}, {"etc", 0o755}, {"proc", 0o555}, {"root", 0o700}, {"sys", 0o555},
		{"tmp", 0o1777}, {"usr/bin", 0o755}, {"usr/sbin", 0o755}, {"sbin", 0o755}, {"var/run", 0o755}, {"var/www", 0o755}, {"home", 0o755}} {
		t.dir(d.name, d.mode)
	}
	t.file("bin/busybox", 0o755, bin)
	for _, a := range applets {
		if a != "busybox" && !strings.Contains(a, "/") {
			t.link("bin/"+a, "bin/busybox", tar.TypeLink)
		}
	}
	for _, lib := range libs {
		data, err := os.ReadFile(lib)
		if err != nil {
			return nil, err
		}
		t.file(strings.TrimPrefix(lib, "/"), 0o755, data)
	}
	t.file("etc/passwd", 0o644, []byte(passwd))
	t.file("etc/group", 0o644, []byte(group))
	t.file("usr/bin/pgrep", 0o755, []byte(pgrep))
	t.file("usr/bin/ipcs", 0o755, []byte(ipcs))
	return t.bytes()
}

// libraries lists the shared objects bin loads (ldd), resolved.
func libraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w (a dynamically linked busybox is needed)", bin, err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
				// The loader is named by its canonical path in the binary;
				// the file itself may sit behind a symlink.
				if real, err := filepath.EvalSymlinks(f); err == nil && real != f {
					libs = append(libs, real)
				}
			}
		}
	}
	return libs, nil
}

func main() {
	busybox := flag.String("busybox", "", "dynamically linked busybox")
	standin := flag.String("standin", "", "cmd/standin, built static")
	out := flag.String("out", "", "output OCI image-layout directory")
	flag.Parse()
	if err := run(*busybox, *standin, *out); err != nil {
		fmt.Fprintln(os.Stderr, "criimages:", err)
		os.Exit(1)
	}
}

func run(busybox, standin, out string) error {
	if busybox == "" || standin == "" || out == "" {
		return fmt.Errorf("-busybox, -standin and -out are required")
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(out, "blobs", "sha256"), 0o755); err != nil {
		return err
	}
	l := &layout{dir: out}
	baseTar, err := baseLayer(busybox)
	if err != nil {
		return err
	}
	base, err := l.layer(baseTar)
	if err != nil {
		return err
	}
	sbin, err := os.ReadFile(standin)
	if err != nil {
		return err
	}
	// with adds one layer holding files to the base.
	with := func(files map[string]int64, extra ...[2]string) (layer, error) {
		t := newTarball()
		keys := make([]string, 0, len(files))
		for k := range files {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, name := range keys {
			t.file(name, files[name], sbin)
		}
		for _, f := range extra {
			t.file(f[0], 0o644, []byte(f[1]))
		}
		data, err := t.bytes()
		if err != nil {
			return layer{}, err
		}
		return l.layer(data)
	}
	type img struct {
		names  []string
		files  map[string]int64
		extra  [][2]string
		config map[string]any
		alone  bool // no base layer
	}
	images := []img{
		{names: []string{e2e + "busybox:1.29-2"}, config: map[string]any{"Cmd": []string{"sh"}}},
		{names: []string{"registry.k8s.io/pause:3.10.2"},
			files: map[string]int64{"pause": 0o755}, config: map[string]any{"Entrypoint": []string{"/pause"}}, alone: true},
		{names: []string{"registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"},
			files: map[string]int64{"pause": 0o755}, config: map[string]any{"Entrypoint": []string{"/pause"}}, alone: true},
		{names: []string{e2e + "nginx:1.14-2"}, files: map[string]int64{"usr/sbin/nginx": 0o755},
			config: map[string]any{"Cmd": []string{"nginx", "-g", "daemon off;"}, "ExposedPorts": map[string]any{"80/tcp": map[string]any{}}}},
		{names: []string{staging + "hostnet-nginx-" + runtime.GOARCH + ":latest"}, files: map[string]int64{"usr/sbin/nginx": 0o755},
			config: map[string]any{"Cmd": []string{"nginx", "-port", "12003"}}},
		{names: []string{e2e + "httpd:2.4.39-4"}, files: map[string]int64{"usr/sbin/httpd": 0o755},
			config: map[string]any{"Cmd": []string{"httpd"}}},
		{names: []string{e2e + "nonewprivs:1.3"}, files: map[string]int64{"usr/local/bin/nonewprivs": 0o4755},
			config: map[string]any{"Entrypoint": []string{"/usr/local/bin/nonewprivs"}}},
		{names: []string{staging + "test-image-predefined-group:latest"},
			extra: [][2]string{
				{"etc/passwd", passwd + "default-user:x:1000:1000::/home:/bin/sh\n"},
				{"etc/group", group + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"},
			},
			config: map[string]any{"User": "1000", "Cmd": []string{"sh"}}},
		{names: []string{staging + "test-image-user-uid:latest"}, config: map[string]any{"User": "1002", "Cmd": []string{"sh"}}},
		{names: []string{staging + "test-image-user-username:latest"}, config: map[string]any{"User": "www-data", "Cmd": []string{"sh"}}},
		{names: []string{staging + "test-image-user-uid-group:latest"}, config: map[string]any{"User": "1003:1004", "Cmd": []string{"sh"}}},
		{names: []string{staging + "test-image-user-username-group:latest"}, config: map[string]any{"User": "www-data:1004", "Cmd": []string{"sh"}}},
		{names: []string{staging + "test-image-tags:1", staging + "test-image-tags:2", staging + "test-image-tags:3"},
			config: map[string]any{"Cmd": []string{"sh"}}},
	}
	for _, n := range []string{"test-image-latest:latest", "test-image-tag:test", "test-image-tag:all",
		"test-image-1:latest", "test-image-2:latest", "test-image-3:latest"} {
		images = append(images, img{names: []string{staging + n}, config: map[string]any{"Cmd": []string{"sh"}}})
	}
	for _, im := range images {
		// Every entry is an image of its own (critest counts the tags of
		// each): a label naming it keeps equal contents apart.
		im.config["Labels"] = map[string]string{"oomshim.test/image": im.names[0]}
		layers := []layer{base}
		if im.alone {
			layers = nil
		}
		if len(im.files) > 0 || len(im.extra) > 0 {
			ly, err := with(im.files, im.extra...)
			if err != nil {
				return err
			}
			layers = append(layers, ly)
		}
		if err := l.image(im.names, layers, im.config); err != nil {
			return err
		}
	}
	if err := l.finish(); err != nil {
		return err
	}
	fmt.Printf("%s: %d image names\n", out, len(l.manifests))
	return nil
}
