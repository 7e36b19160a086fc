package ota

import (
	"fmt"
	"maps"
	"slices"

	"github.com/hashicorp/go-version"

	"github.com/otaflow/otaflow/internal/protocol"
)

// Compatibility names the devices a package fits, as hawkBit's and Mender's compatibility
// properties do: labels the device must carry (for example model=pump-v2) and a range of the
// version of the upgrade's type it must run now.
type Compatibility struct {
	// Labels the device must carry, every one.
	Labels map[string]string `json:"labels,omitempty"`
	// Versions is a range of the device's current version under the upgrade's version key,
	// as comma-separated constraints such as ">=1.0,<2.0" (operators = != > < >= <= ~>);
	// "" means any version. A device that reports no version, or one that is not a version
	// number, does not fit a range.
	Versions string `json:"versions,omitempty"`
}

// Validate checks the labels and the version range. The labels are checked in key order, so
// that workflows, which call it, always report the same bad label.
func (c Compatibility) Validate() error {
	// Sorted, so deterministic: workflowcheck cannot see that slices.Sorted undoes the map order.
	keys := slices.Sorted(maps.Keys(c.Labels)) //workflowcheck:ignore
	for _, k := range keys {
		v := c.Labels[k]
		if k == "" || len(k) > protocol.MaxStatusKeyLength || len(v) > protocol.MaxStatusValueBytes {
			return fmt.Errorf("compatibility label %q=%q: keys 1 to %d characters, values at most %d bytes",
				k, v, protocol.MaxStatusKeyLength, protocol.MaxStatusValueBytes)
		}
	}
	if c.Versions != "" {
		if _, err := version.NewConstraint(c.Versions); err != nil {
			return fmt.Errorf("compatible versions %q: give constraints like \">=1.0,<2.0\": %w", c.Versions, err)
		}
	}
	return nil
}

// Fits reports whether a device with these labels, reporting current as its version of the
// upgrade's type, fits; when it does not, why not, for people.
func (c Compatibility) Fits(labels map[string]string, current string) (bool, string) {
	for _, k := range slices.Sorted(maps.Keys(c.Labels)) {
		if got, ok := labels[k]; !ok || got != c.Labels[k] {
			return false, fmt.Sprintf("label %s is %q, the package needs %q", k, got, c.Labels[k])
		}
	}
	if c.Versions == "" {
		return true, ""
	}
	constraints, err := version.NewConstraint(c.Versions)
	if err != nil {
		return false, fmt.Sprintf("compatible versions %q are not valid", c.Versions)
	}
	if current == "" {
		return false, fmt.Sprintf("the device reports no version; the package needs %s", c.Versions)
	}
	v, err := version.NewVersion(current)
	if err != nil {
		return false, fmt.Sprintf("version %q is not a version number; the package needs %s", current, c.Versions)
	}
	if !constraints.Check(v) {
		return false, fmt.Sprintf("version %s is outside %s", current, c.Versions)
	}
	return true, ""
}
