// Command criregistry serves an OCI image-layout directory (as written by
// cmd/criimages) read-only over the registry HTTP API, for containerd to
// pull from as a mirror of every registry: it answers by repository path
// and ignores which registry the image is named after (containerd passes
// that as ?ns=), so "registry.k8s.io/pause:3.9" is served as pause:3.9.
//
//	criregistry -dir DIR -addr 127.0.0.1:5000
//
// Only GET and HEAD of /v2/, /v2/<name>/manifests/<tag or digest> and
// /v2/<name>/blobs/<digest>.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

type registry struct {
	dir  string
	tags map[string]descriptor // "<path>:<tag>" -> manifest
	mans map[string]descriptor // digest -> manifest
}

var (
	manifestPath = regexp.MustCompile(`^/v2/(.+)/manifests/([^/]+)$`)
	blobPath     = regexp.MustCompile(`^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$`)
)

func load(dir string) (*registry, error) {
	data, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(data, &index); err != nil {
		return nil, err
	}
	r := &registry{dir: dir, tags: map[string]descriptor{}, mans: map[string]descriptor{}}
	for _, m := range index.Manifests {
		name := m.Annotations["io.containerd.image.name"]
		i := strings.LastIndex(name, ":")
		slash := strings.Index(name, "/")
		if i < 0 || slash < 0 || slash > i {
			return nil, fmt.Errorf("index entry %q is not host/path:tag", name)
		}
		r.tags[name[slash+1:]] = m
		r.mans[m.Digest] = m
	}
	return r, nil
}

func (r *registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		http.Error(w, "read-only registry", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if req.URL.Path == "/v2/" || req.URL.Path == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, "{}")
		return
	}
	if m := manifestPath.FindStringSubmatch(req.URL.Path); m != nil {
		d, ok := r.mans[m[2]]
		if !ok {
			d, ok = r.tags[m[1]+":"+m[2]]
		}
		if !ok {
			notFound(w, "MANIFEST_UNKNOWN", req.URL.Path)
			return
		}
		r.serveBlob(w, req, d.Digest, d.MediaType)
		return
	}
	if m := blobPath.FindStringSubmatch(req.URL.Path); m != nil {
		r.serveBlob(w, req, m[2], "application/octet-stream")
		return
	}
	notFound(w, "NAME_UNKNOWN", req.URL.Path)
}

func (r *registry) serveBlob(w http.ResponseWriter, req *http.Request, digest, mediaType string) {
	f, err := os.Open(filepath.Join(r.dir, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:")))
	if err != nil {
		notFound(w, "BLOB_UNKNOWN", digest)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Docker-Content-Digest", digest)
	w.Header().Set("Etag", `"`+digest+`"`)
	http.ServeContent(w, req, "", time.Time{}, f)
}

func notFound(w http.ResponseWriter, code, what string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`, code, what)
}

func main() {
	dir := flag.String("dir", "", "OCI image-layout directory")
	addr := flag.String("addr", "127.0.0.1:5000", "listen address (loopback only)")
	flag.Parse()
	r, err := load(*dir)
	if err != nil {
		log.Fatalf("criregistry: %v", err)
	}
	log.Printf("criregistry: %d tags from %s on %s", len(r.tags), *dir, *addr)
	log.Fatal(http.ListenAndServe(*addr, r))
}
