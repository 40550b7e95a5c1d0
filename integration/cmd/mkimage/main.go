// Command mkimage writes a small busybox OCI image-layout tarball without any
// registry, for the integration tests and the demo.
//
//	mkimage -busybox /bin/busybox -name docker.io/library/busybox:latest -out busybox.tar
//
// The layer holds /bin/busybox with every applet hard-linked beside it in /bin,
// the directories a container runtime mounts over (/proc, /sys, /dev, /tmp),
// /etc/passwd and /etc/group (root and nobody) and /root. Every timestamp is
// fixed and every list is sorted, so the same busybox binary always gives a
// byte-identical tarball (and so the same image digest).
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

// epoch is the fixed mtime of every entry and the image's creation time.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"

	// annotationRefName is the OCI tag annotation; annotationImageName is
	// containerd's full-name annotation, which `ctr images import` and the
	// Go client's Import prefer, so the image gets the full name by itself.
	annotationRefName   = "org.opencontainers.image.ref.name"
	annotationImageName = "io.containerd.image.name"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type blob struct {
	name string // blobs/sha256/<hex>
	data []byte
	desc descriptor
}

func newBlob(mediaType string, data []byte) blob {
	sum := sha256.Sum256(data)
	h := hex.EncodeToString(sum[:])
	return blob{
		name: "blobs/sha256/" + h,
		data: data,
		desc: descriptor{MediaType: mediaType, Digest: "sha256:" + h, Size: int64(len(data))},
	}
}

func main() {
	var (
		busybox = flag.String("busybox", "/bin/busybox", "static busybox binary to put in /bin")
		name    = flag.String("name", "docker.io/library/busybox:latest", "full image name recorded in index.json")
		out     = flag.String("out", "busybox.tar", "output OCI image-layout tarball")
		cmd     = flag.String("cmd", "sh", "the image's command, words separated by spaces (a pause image: \"sleep 2147483647\")")
	)
	flag.Parse()
	if err := run(*busybox, *name, *out, strings.Fields(*cmd)); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(busybox, name, out string, cmd []string) error {
	tag := name[strings.LastIndex(name, ":")+1:]
	if !strings.Contains(name, ":") || strings.Contains(tag, "/") {
		return fmt.Errorf("image name %q must end in :<tag>", name)
	}
	applets, err := listApplets(busybox)
	if err != nil {
		return err
	}
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	layerTar, err := buildLayer(bin, applets)
	if err != nil {
		return err
	}
	diffID := sha256.Sum256(layerTar)
	layerGz, err := gzipBytes(layerTar)
	if err != nil {
		return err
	}
	layer := newBlob(mediaTypeLayer, layerGz)

	config, err := json.Marshal(map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Cmd": cmd,
		},
		"rootfs": map[string]any{
			"type":     "layers",
			"diff_ids": []string{"sha256:" + hex.EncodeToString(diffID[:])},
		},
		"history": []map[string]any{{
			"created":    epoch.Format(time.RFC3339),
			"created_by": "oomshim integration/cmd/mkimage from " + busybox,
		}},
	})
	if err != nil {
		return err
	}
	cfg := newBlob(mediaTypeConfig, config)

	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        cfg.desc,
		"layers":        []descriptor{layer.desc},
	})
	if err != nil {
		return err
	}
	man := newBlob(mediaTypeManifest, manifest)
	manDesc := man.desc
	manDesc.Annotations = map[string]string{annotationRefName: tag, annotationImageName: name}
	manDesc.Platform = &platform{Architecture: runtime.GOARCH, OS: "linux"}

	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeIndex,
		"manifests":     []descriptor{manDesc},
	})
	if err != nil {
		return err
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
	}
	if err := writeDir(tw, "blobs/", 0o755); err != nil {
		return err
	}
	if err := writeDir(tw, "blobs/sha256/", 0o755); err != nil {
		return err
	}
	for _, b := range []blob{layer, cfg, man} {
		files = append(files, struct {
			name string
			data []byte
		}{b.name, b.data})
	}
	for _, f := range files {
		if err := writeFile(tw, f.name, 0o644, f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		return err
	}
	fmt.Printf("%s %s (manifest %s, %d applets)\n", out, name, man.desc.Digest, len(applets))
	return nil
}

// listApplets asks busybox for its applet names, sorted and deduplicated.
func listApplets(busybox string) ([]string, error) {
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, err)
	}
	seen := map[string]bool{"busybox": true}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if seen[a] || strings.Contains(a, "/") {
			continue
		}
		seen[a] = true
		applets = append(applets, a)
	}
	sort.Strings(applets)
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list printed no applets", busybox)
	}
	return applets, nil
}

func buildLayer(busybox []byte, applets []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := []struct {
		name string
		mode int64
	}{
		{"bin/", 0o755}, {"dev/", 0o755}, {"etc/", 0o755}, {"proc/", 0o555},
		{"root/", 0o700}, {"sys/", 0o555}, {"tmp/", 0o1777},
		{"usr/", 0o755}, {"usr/bin/", 0o755}, {"usr/sbin/", 0o755}, {"sbin/", 0o755},
		{"var/", 0o755},
	}
	for _, d := range dirs {
		if err := writeDir(tw, d.name, d.mode); err != nil {
			return nil, err
		}
	}
	if err := writeFile(tw, "bin/busybox", 0o755, busybox); err != nil {
		return nil, err
	}
	for _, a := range applets {
		hdr := header("bin/"+a, tar.TypeLink, 0o755)
		hdr.Linkname = "bin/busybox"
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
	}
	etc := []struct{ name, data string }{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
		{"etc/group", "root:x:0:\nnobody:x:65534:\n"},
		{"etc/hostname", "busybox\n"},
	}
	for _, f := range etc {
		if err := writeFile(tw, f.name, 0o644, []byte(f.data)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func header(name string, typ byte, mode int64) *tar.Header {
	return &tar.Header{
		Typeflag: typ,
		Name:     name,
		Mode:     mode,
		ModTime:  epoch,
		Uname:    "root",
		Gname:    "root",
	}
}

func writeDir(tw *tar.Writer, name string, mode int64) error {
	return tw.WriteHeader(header(name, tar.TypeDir, mode))
}

func writeFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	hdr := header(name, tar.TypeReg, mode)
	hdr.Size = int64(len(data))
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// gzipBytes compresses with a zero header time and no name, so the output
// depends on the input only.
func gzipBytes(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(data); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
