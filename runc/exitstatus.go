package runc

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	gorunc "github.com/containerd/go-runc"
)

// exitStatusFile records the init's exit in the bundle, for the delete
// action of a shim that died before containerd learnt of the exit. The
// name and format (go-runc's Exit as JSON) are those of containerd's own
// shim (2.4 and later), so either shim's delete action reads the other's.
const exitStatusFile = "exit.json"

// WriteExitStatus records the init's exit in the bundle: written to a
// temporary file and renamed, so a reader sees all of it or nothing.
func WriteExitStatus(bundle string, pid, status int, at time.Time) error {
	data, err := json.Marshal(gorunc.Exit{Timestamp: at, Pid: pid, Status: status})
	if err != nil {
		return err
	}
	tmp := filepath.Join(bundle, "."+exitStatusFile)
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("record exit status: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(bundle, exitStatusFile)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("record exit status: %w", err)
	}
	return nil
}

// ReadExitStatus reads the exit WriteExitStatus recorded; an error if there
// is none (os.ErrNotExist) or it is not a valid exit.
func ReadExitStatus(bundle string) (gorunc.Exit, error) {
	path := filepath.Join(bundle, exitStatusFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return gorunc.Exit{}, err
	}
	var e gorunc.Exit
	if err := json.Unmarshal(data, &e); err != nil {
		return gorunc.Exit{}, fmt.Errorf("parse %s: %w", path, err)
	}
	if e.Pid <= 0 || e.Status < 0 || e.Timestamp.IsZero() {
		return gorunc.Exit{}, fmt.Errorf("%s holds no valid exit: %s", path, data)
	}
	return e, nil
}
