package protocol

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseProgress(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    Progress
		wantErr string
	}{
		{"download progress", `{"id":"c1","type":"firmware","version":"1.1","progress":70,"desc":"downloading"}`,
			Progress{ID: "c1", Type: "firmware", Version: "1.1", Progress: 70, Desc: "downloading"}, ""},
		{"seed format without id", `{"type":"app","version":"2","progress":100}`, Progress{Type: "app", Version: "2", Progress: 100}, ""},
		{"error code", `{"type":"os","version":"9","progress":-2,"desc":"md5"}`, Progress{Type: "os", Version: "9", Progress: -2, Desc: "md5"}, ""},
		{"unknown fields ignored", `{"type":"os","version":"9","progress":5,"extra":[1,2]}`, Progress{Type: "os", Version: "9", Progress: 5}, ""},
		{"malformed", `{"type":`, Progress{}, "malformed"},
		{"not an object", `[1,2]`, Progress{}, "malformed"},
		{"null", `null`, Progress{}, "not a JSON object"},
		{"trailing data", `{"type":"a","version":"1","progress":1} {}`, Progress{}, "trailing"},
		{"quoted number", `{"type":"a","version":"1","progress":"70"}`, Progress{}, "integer"},
		{"float", `{"type":"a","version":"1","progress":70.5}`, Progress{}, "integer"},
		{"zero", `{"type":"a","version":"1","progress":0}`, Progress{}, "1..100"},
		{"over 100", `{"type":"a","version":"1","progress":101}`, Progress{}, "1..100"},
		{"unknown code", `{"type":"a","version":"1","progress":-5}`, Progress{}, "1..100"},
		{"missing progress", `{"type":"a","version":"1"}`, Progress{}, "missing"},
		{"missing type", `{"version":"1","progress":1}`, Progress{}, `"type" is missing`},
		{"type not a string", `{"type":1,"version":"1","progress":1}`, Progress{}, "must be a string"},
		{"long desc", `{"type":"a","version":"1","progress":1,"desc":"` + strings.Repeat("x", 257) + `"}`, Progress{}, "desc"},
		{"not UTF-8", "{\"type\":\"a\xff\",\"version\":\"1\",\"progress\":1}", Progress{}, "UTF-8"},
		{"oversized", `{"type":"a","version":"1","progress":1,"pad":"` + strings.Repeat("x", MaxPayloadSize) + `"}`, Progress{}, "more than"},
		{"empty", ``, Progress{}, "empty"},
		// PROTOCOL.md 1.1 Limits, at and past each edge.
		{"id of 64", `{"id":"` + strings.Repeat("i", 64) + `","type":"a","version":"1","progress":1}`,
			Progress{ID: strings.Repeat("i", 64), Type: "a", Version: "1", Progress: 1}, ""},
		{"id of 65", `{"id":"` + strings.Repeat("i", 65) + `","type":"a","version":"1","progress":1}`, Progress{}, `"id"`},
		{"type of 32", `{"type":"` + strings.Repeat("t", 32) + `","version":"1","progress":1}`,
			Progress{Type: strings.Repeat("t", 32), Version: "1", Progress: 1}, ""},
		{"type of 33", `{"type":"` + strings.Repeat("t", 33) + `","version":"1","progress":1}`, Progress{}, `"type"`},
		{"type with capitals", `{"type":"Firmware","version":"1","progress":1}`, Progress{}, `a-z 0-9 _ -`},
		{"type with a dot", `{"type":"fw.main","version":"1","progress":1}`, Progress{}, `a-z 0-9 _ -`},
		{"type with _ and -", `{"type":"main_fw-2","version":"1","progress":1}`, Progress{Type: "main_fw-2", Version: "1", Progress: 1}, ""},
		{"version of 64 characters", `{"type":"a","version":"` + strings.Repeat("é", 64) + `","progress":1}`,
			Progress{Type: "a", Version: strings.Repeat("é", 64), Progress: 1}, ""},
		{"version of 65", `{"type":"a","version":"` + strings.Repeat("v", 65) + `","progress":1}`, Progress{}, `"version"`},
		{"empty version", `{"type":"a","version":"","progress":1}`, Progress{}, `"version"`},
		{"desc of 256 characters", `{"type":"a","version":"1","progress":1,"desc":"` + strings.Repeat("é", 256) + `"}`,
			Progress{Type: "a", Version: "1", Progress: 1, Desc: strings.Repeat("é", 256)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseProgress([]byte(tt.payload))
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalidMessage) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrInvalidMessage about %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    Status
		wantErr string
	}{
		{"versions", `{"app_ver":"1.1","os_ver":"9.0"}`, Status{"app_ver": "1.1", "os_ver": "9.0"}, ""},
		{"number value", `{"app_ver":1.1}`, nil, "must be a string"},
		{"nested", `{"app_ver":{"v":"1"}}`, nil, "must be a string"},
		{"empty object", `{}`, nil, "no versions"},
		{"array", `["1"]`, nil, "malformed"},
		{"long value", `{"a":"` + strings.Repeat("1", 129) + `"}`, nil, "longer"},
		// PROTOCOL.md 1.1 Limits, at and past each edge.
		{"value of 128 bytes", `{"a":"` + strings.Repeat("1", 128) + `"}`, Status{"a": strings.Repeat("1", 128)}, ""},
		{"key of 64", `{"` + strings.Repeat("k", 64) + `":"1"}`, Status{strings.Repeat("k", 64): "1"}, ""},
		{"key of 65", `{"` + strings.Repeat("k", 65) + `":"1"}`, nil, "1 to 64 characters"},
		{"64 keys", statusWithKeys(64), statusOf(64), ""},
		{"65 keys", statusWithKeys(65), nil, "more than 64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatus([]byte(tt.payload))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(got) != len(tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// statusWithKeys is a status payload of n versions; statusOf the Status it holds.
func statusWithKeys(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf(`"k%d":"1"`, i)
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func statusOf(n int) Status {
	st := Status{}
	for i := 0; i < n; i++ {
		st[fmt.Sprintf("k%d", i)] = "1"
	}
	return st
}

func TestParseTopic(t *testing.T) {
	tests := []struct {
		topic, id, kind string
		ok              bool
	}{
		{"devices/d-1/ota/progress", "d-1", KindProgress, true},
		{"devices/d.1_x/status", "d.1_x", KindStatus, true},
		{"devices/d1/ota/command", "d1", KindCommand, true},
		{"devices/d1/other", "", "", false},
		{"devices/a+b/status", "", "", false},
		{"devices//status", "", "", false},
		{"things/d1/status", "", "", false},
		{"devices/" + strings.Repeat("a", 65) + "/status", "", "", false},
	}
	for _, tt := range tests {
		id, kind, err := ParseTopic(tt.topic)
		if (err == nil) != tt.ok || id != tt.id || kind != tt.kind {
			t.Errorf("ParseTopic(%q) = %q, %q, %v", tt.topic, id, kind, err)
		}
	}
	if ProgressTopic("x") != "devices/x/ota/progress" || StatusTopic("x") != "devices/x/status" || CommandTopic("x") != "devices/x/ota/command" {
		t.Error("topics differ from PROTOCOL.md")
	}
}

func TestParseCommand(t *testing.T) {
	good := `{"id":"c1","type":"firmware","version":"1.1","url":"http://f/1.bin","md5":"9e107d9d372bb6826bd81d3542a419d6","size":10,
		"issued_at":"2026-11-25T10:00:00Z","expires_at":"2026-11-26T10:00:00Z"}`
	if c, err := ParseCommand([]byte(good)); err != nil || c.Size != 10 || c.ExpiresAt.IsZero() {
		t.Fatalf("good command: %+v, %v", c, err)
	}
	for _, bad := range []string{
		strings.Replace(good, `"size":10`, `"size":0`, 1),
		strings.Replace(good, "9e107d9d", "9E107D9D", 1),
		strings.Replace(good, `"size":10`, `"size":"10"`, 1),
		strings.Replace(good, `"id":"c1",`, ``, 1),
	} {
		if _, err := ParseCommand([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// FuzzParse checks that no payload makes a parser panic, and that whatever a parser accepts
// passes its own validation.
func FuzzParse(f *testing.F) {
	for _, s := range []string{`{"type":"a","version":"1","progress":1}`, `{"a_ver":"1"}`, `{`, `null`, "\xff",
		`{"id":"c","type":"t","version":"v","url":"u","md5":"9e107d9d372bb6826bd81d3542a419d6","size":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := ParseProgress(b); err == nil && p.Validate() != nil {
			t.Fatalf("accepted invalid progress %+v", p)
		}
		if s, err := ParseStatus(b); err == nil && (len(s) == 0 || s.Validate() != nil) {
			t.Fatalf("accepted invalid status %v", s)
		}
		if c, err := ParseCommand(b); err == nil && c.Validate() != nil {
			t.Fatalf("accepted invalid command %+v", c)
		}
		_, _, _ = ParseTopic(string(b))
	})
}
