package ota

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Duration is a time.Duration that travels in workflow histories, queries and results as a
// Go duration string ("10m0s"), so that people read it as such in the Temporal Web UI and
// in the starter's JSON. It reads the string form and, as recorded before it existed, a
// number of nanoseconds: histories of earlier runs still decode and replay.
//
// Convert with Duration(d) and Std; String formats like time.Duration.
type Duration time.Duration

// Std is d as the standard library's time.Duration, for arithmetic and the time package.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d like time.Duration: "1h30m0s", "0s".
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a quoted Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.String())
}

// UnmarshalJSON reads a Go duration string ("90s", "1h30m") or a whole number of
// nanoseconds (as time.Duration was written before). null leaves d unchanged, as it does
// any other JSON value.
func (d *Duration) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		return nil
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("duration %s: %w", b, err)
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: give a Go duration such as 90s, 10m or 1h30m", s)
		}
		*d = Duration(v)
		return nil
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("duration %s: give a Go duration string such as \"10m\" or a whole number of nanoseconds", b)
	}
	*d = Duration(v)
	return nil
}
