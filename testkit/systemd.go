package testkit

import (
	"fmt"
	"os/exec"
	"strings"
)

// SystemdUnits lists the scope and slice units systemd knows, loaded or
// not, whose names contain substr.
func SystemdUnits(substr string) ([]string, error) {
	out, err := exec.Command("systemctl", "list-units", "--all", "--no-legend", "--plain", "--type=scope,slice").Output()
	if err != nil {
		return nil, fmt.Errorf("systemctl list-units: %w", err)
	}
	var units []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(f[0], substr) {
			units = append(units, f[0])
		}
	}
	return units, nil
}

// StopSystemdUnits stops units (slices of the caller's, once empty).
func StopSystemdUnits(units ...string) error {
	if out, err := exec.Command("systemctl", append([]string{"stop"}, units...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl stop %s: %w: %s", strings.Join(units, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// SetSystemdProperties sets runtime properties (such as MemoryMax=) of a
// unit, as kubelet sizes a pod's slice.
func SetSystemdProperties(unit string, props ...string) error {
	args := append([]string{"set-property", "--runtime", unit}, props...)
	if out, err := exec.Command("systemctl", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
