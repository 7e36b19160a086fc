package protocol

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
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
		{"devices/d1/ota/cancel", "d1", KindCancel, true},
		{"devices/d1/ota/cancel/x", "", "", false},
		{"devices/d1/ota/Cancel", "", "", false},
		{"devices/d1/ota", "", "", false},
		{"devices/d1/cancel", "", "", false},
		{"devices/+/ota/cancel", "", "", false},
		{"devices/d1/other", "", "", false},
		{"devices/a+b/status", "", "", false},
		{"devices//status", "", "", false},
		{"things/d1/status", "", "", false},
		{"devices/" + strings.Repeat("a", 64) + "/ota/cancel", strings.Repeat("a", 64), KindCancel, true},
		{"devices/" + strings.Repeat("a", 65) + "/status", "", "", false},
		{"devices/" + strings.Repeat("a", 65) + "/ota/cancel", "", "", false},
	}
	for _, tt := range tests {
		id, kind, err := ParseTopic(tt.topic)
		if (err == nil) != tt.ok || id != tt.id || kind != tt.kind {
			t.Errorf("ParseTopic(%q) = %q, %q, %v", tt.topic, id, kind, err)
		}
	}
	for _, tt := range []struct{ got, want string }{
		{ProgressTopic("x"), "devices/x/ota/progress"},
		{StatusTopic("x"), "devices/x/status"},
		{CommandTopic("x"), "devices/x/ota/command"},
		{CancelTopic("x"), "devices/x/ota/cancel"},
	} {
		if tt.got != tt.want {
			t.Errorf("topic %q differs from PROTOCOL.md's %q", tt.got, tt.want)
		}
	}
}

// Values of the PROTOCOL.md 1.1 integrity fields for tests: a sha256 and a signature of the
// right forms (the bytes need not verify here; internal/pkgsig checks that).
var (
	testSHA256 = strings.Repeat("0123456789abcdef", 4)
	testSig    = base64.StdEncoding.EncodeToString([]byte(strings.Repeat("\xfb\xef\xbe", 21) + "\xff"))
)

// commandJSON is a valid version 1 command with fields replaced, added or (value "-") removed;
// values are raw JSON.
func commandJSON(edits ...string) string {
	fields := map[string]string{
		"id": `"c1"`, "type": `"firmware"`, "version": `"1.1"`, "url": `"http://f/1.bin"`,
		"md5": `"9e107d9d372bb6826bd81d3542a419d6"`, "size": "10",
		"issued_at": `"2026-11-25T10:00:00Z"`, "expires_at": `"2026-11-26T10:00:00Z"`,
	}
	for i := 0; i+1 < len(edits); i += 2 {
		if edits[i+1] == "-" {
			delete(fields, edits[i])
		} else {
			fields[edits[i]] = edits[i+1]
		}
	}
	parts := make([]string, 0, len(fields))
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		parts = append(parts, fmt.Sprintf("%q:%s", k, fields[k]))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func quoted(s string) string { return `"` + s + `"` }

func TestParseCommand(t *testing.T) {
	signed := []string{"sha256", quoted(testSHA256), "sig", quoted(testSig), "key_id", `"release-2026"`}
	with := func(edits ...string) string { return commandJSON(append(slices.Clone(signed), edits...)...) }
	// nonCanonical differs from testSig in the padding bits of its last data character, which
	// a lenient decoder would accept as the same signature.
	nonCanonical := testSig[:85] + "B=="
	tests := []struct {
		name    string
		payload string
		check   func(UpgradeCommand) bool // for a valid command
		wantErr string
	}{
		{"version 1 command", commandJSON(), func(c UpgradeCommand) bool {
			return c.Size == 10 && !c.ExpiresAt.IsZero() && c.SHA256 == "" && !c.Signed()
		}, ""},
		{"sha256 alone", commandJSON("sha256", quoted(testSHA256)), func(c UpgradeCommand) bool { return c.SHA256 == testSHA256 && !c.Signed() }, ""},
		{"signed", with(), func(c UpgradeCommand) bool {
			return c.SHA256 == testSHA256 && c.Sig == testSig && c.KeyID == "release-2026" && c.Signed()
		}, ""},
		{"null fields are absent", commandJSON("sha256", "null", "sig", "null", "key_id", "null"), func(c UpgradeCommand) bool { return !c.Signed() }, ""},
		{"size 0", commandJSON("size", "0"), nil, `"size"`},
		{"uppercase md5", commandJSON("md5", `"9E107D9D372BB6826BD81D3542A419D6"`), nil, "md5"},
		{"size as a string", commandJSON("size", `"10"`), nil, "wrong field type"},
		{"no id", commandJSON("id", "-"), nil, `"id"`},

		// sha256: exactly 64 lowercase hex digits.
		{"sha256 of 63", commandJSON("sha256", quoted(testSHA256[:63])), nil, "sha256 must be 64 lowercase hex"},
		{"sha256 of 65", commandJSON("sha256", quoted(testSHA256+"0")), nil, "sha256 must be 64 lowercase hex"},
		{"uppercase sha256", commandJSON("sha256", quoted(strings.ToUpper(testSHA256))), nil, "sha256 must be 64 lowercase hex"},
		{"sha256 not hex", commandJSON("sha256", quoted("g"+testSHA256[1:])), nil, "sha256 must be 64 lowercase hex"},
		{"sha256 as a number", commandJSON("sha256", "1"), nil, "wrong field type"},

		// sig: 64 bytes, standard base64 with padding, canonical.
		{"sig without padding", with("sig", quoted(strings.TrimRight(testSig, "="))), nil, "sig must be 64 bytes"},
		{"sig of 63 bytes", with("sig", quoted(base64.StdEncoding.EncodeToString(make([]byte, 63)))), nil, "sig must be 64 bytes"},
		{"sig of 65 bytes", with("sig", quoted(base64.StdEncoding.EncodeToString(make([]byte, 65)))), nil, "sig must be 64 bytes"},
		{"sig in URL-safe base64", with("sig", quoted(base64.URLEncoding.EncodeToString([]byte(strings.Repeat("\xfb\xef\xbe", 21)+"\xff")))), nil, "sig must be 64 bytes"},
		{"sig with a line break", with("sig", quoted(testSig[:40]+`\n`+testSig[41:])), nil, "sig must be 64 bytes"},
		{"sig not canonical", with("sig", quoted(nonCanonical)), nil, "not canonical"},
		{"sig of zero bytes is well-formed", with("sig", quoted(base64.StdEncoding.EncodeToString(make([]byte, 64)))), func(c UpgradeCommand) bool { return c.Signed() }, ""},

		// key_id: 1 to 64 of A-Z a-z 0-9 _ . -
		{"key_id of 64", with("key_id", quoted(strings.Repeat("k", 64))), func(c UpgradeCommand) bool { return len(c.KeyID) == 64 }, ""},
		{"key_id of every allowed character", with("key_id", `"AZaz09_.-"`), func(c UpgradeCommand) bool { return c.KeyID == "AZaz09_.-" }, ""},
		{"key_id of 65", with("key_id", quoted(strings.Repeat("k", 65))), nil, "key_id must be 1 to 64"},
		{"key_id with a slash", with("key_id", `"keys/a"`), nil, "key_id must be 1 to 64"},
		{"key_id with a space", with("key_id", `"a b"`), nil, "key_id must be 1 to 64"},
		{"key_id not ASCII", with("key_id", `"clé"`), nil, "key_id must be 1 to 64"},

		// Together: a signature names its key and the sha256 it signs.
		{"sig without key_id", with("key_id", "-"), nil, `"sig" needs the "key_id"`},
		{"sig with an empty key_id", with("key_id", `""`), nil, `"sig" needs the "key_id"`},
		{"key_id without sig", with("sig", "-"), nil, `"key_id" without "sig"`},
		{"sig without sha256", with("sha256", "-"), nil, `"sig" needs the "sha256"`},
		{"largest command fits the payload limit", with("id", quoted(strings.Repeat("i", 64)), "type", quoted(strings.Repeat("t", 32)),
			"version", quoted(strings.Repeat("v", 64)), "url", quoted("http://f/"+strings.Repeat("u", 2048-9)), "key_id", quoted(strings.Repeat("k", 64)),
			"size", "9223372036854775807"), func(c UpgradeCommand) bool { return len(c.URL) == 2048 }, ""},
		{"url of 2049", commandJSON("url", quoted("http://f/"+strings.Repeat("u", 2049-9))), nil, `"url"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseCommand([]byte(tt.payload))
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalidMessage) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrInvalidMessage about %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !tt.check(c) {
				t.Fatalf("got %+v, %v", c, err)
			}
		})
	}
}

// TestCommandJSON: a command without the 1.1 fields encodes exactly as in version 1, and one
// with them round-trips.
func TestCommandJSON(t *testing.T) {
	at := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	v1 := UpgradeCommand{ID: "c1", Type: "firmware", Version: "1.1", URL: "http://f/1.bin", MD5: "9e107d9d372bb6826bd81d3542a419d6",
		Size: 10, IssuedAt: at, ExpiresAt: at.Add(24 * time.Hour)}
	b, err := json.Marshal(v1)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"c1","type":"firmware","version":"1.1","url":"http://f/1.bin","md5":"9e107d9d372bb6826bd81d3542a419d6","size":10,` +
		`"issued_at":"2026-11-25T10:00:00Z","expires_at":"2026-11-26T10:00:00Z"}`
	if string(b) != want {
		t.Errorf("version 1 command encodes as\n%s\nwant\n%s", b, want)
	}

	signed := v1
	signed.SHA256, signed.Sig, signed.KeyID = testSHA256, testSig, "release-2026"
	b, err = json.Marshal(signed)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(b), `,"sha256":"`+testSHA256+`","sig":"`+testSig+`","key_id":"release-2026"}`) {
		t.Errorf("signed command encodes as %s", b)
	}
	got, err := ParseCommand(b)
	if err != nil || got.SHA256 != signed.SHA256 || got.Sig != signed.Sig || got.KeyID != signed.KeyID || !got.ExpiresAt.Equal(signed.ExpiresAt) {
		t.Errorf("round trip: %+v, %v", got, err)
	}
}

func TestDecodeSignature(t *testing.T) {
	b, err := DecodeSignature(testSig)
	if err != nil || len(b) != SignatureSize || base64.StdEncoding.EncodeToString(b) != testSig {
		t.Fatalf("DecodeSignature(testSig) = %x, %v", b, err)
	}
	for _, bad := range []string{"", "=", testSig[:87], testSig + "=", " " + testSig, testSig[:85] + "B=="} {
		if _, err := DecodeSignature(bad); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("DecodeSignature(%q) = %v, want ErrInvalidMessage", bad, err)
		}
	}
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"devices/a/status", 16, "devices/a/status"},
		{"devices/a/status", 100, "devices/a/status"},
		{"devices/a/status", 15, "devices/a/st..."},
		{"devices/a/status", 3, "..."},
		{"devices/a/status", 2, ".."},
		{"devices/a/status", 0, ""},
		{"devices/a/status", -1, ""},
		{"", 0, ""},
		// A character is never split: é is 2 bytes, 日 3.
		{strings.Repeat("é", 10), 9, "ééé..."},
		{strings.Repeat("é", 10), 10, "ééé..."},
		{strings.Repeat("é", 10), 20, strings.Repeat("é", 10)},
		{"日本語", 8, "日..."},
		{"日本語", 5, "..."},
	}
	for _, tt := range tests {
		got := Truncate(tt.in, tt.n)
		if got != tt.want || len(got) > max(tt.n, 0) || !utf8.ValidString(got) {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

func TestParseCancel(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    string
		wantErr string
	}{
		{"cancel", `{"id":"c1"}`, "c1", ""},
		{"unknown fields ignored", `{"id":"c1","reason":"rollout canceled"}`, "c1", ""},
		{"id of 64", `{"id":"` + strings.Repeat("i", 64) + `"}`, strings.Repeat("i", 64), ""},
		{"id of 64 characters", `{"id":"` + strings.Repeat("é", 64) + `"}`, strings.Repeat("é", 64), ""},
		{"id of 65", `{"id":"` + strings.Repeat("i", 65) + `"}`, "", `"id" must be 1 to 64`},
		{"empty id", `{"id":""}`, "", `"id" must be 1 to 64`},
		{"no id", `{"command":"c1"}`, "", `"id" is missing`},
		{"null id", `{"id":null}`, "", `"id" is missing`},
		{"id a number", `{"id":1}`, "", "must be a string"},
		{"empty object", `{}`, "", `"id" is missing`},
		{"array", `["c1"]`, "", "malformed"},
		{"null", `null`, "", "not a JSON object"},
		{"trailing data", `{"id":"c1"}{}`, "", "trailing"},
		{"not UTF-8", "{\"id\":\"c\xff\"}", "", "UTF-8"},
		{"empty", ` `, "", "empty"},
		{"oversized", `{"id":"c1","pad":"` + strings.Repeat("x", MaxPayloadSize) + `"}`, "", "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCancel([]byte(tt.payload))
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalidMessage) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrInvalidMessage about %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got.ID != tt.want {
				t.Fatalf("got %+v, %v; want id %q", got, err, tt.want)
			}
		})
	}
	b, err := json.Marshal(CancelMessage{ID: "c1"})
	if err != nil || string(b) != `{"id":"c1"}` {
		t.Errorf("CancelMessage encodes as %s, %v; want PROTOCOL.md's {\"id\": ...}", b, err)
	}
}

// FuzzParse checks that no payload makes a parser panic, that whatever a parser accepts
// passes its own validation, and that an accepted command or cancel survives a round trip.
func FuzzParse(f *testing.F) {
	for _, s := range []string{`{"type":"a","version":"1","progress":1}`, `{"a_ver":"1"}`, `{`, `null`, "\xff",
		`{"id":"c","type":"t","version":"v","url":"u","md5":"9e107d9d372bb6826bd81d3542a419d6","size":1}`,
		commandJSON("sha256", quoted(testSHA256)),
		commandJSON("sha256", quoted(testSHA256), "sig", quoted(testSig), "key_id", `"k"`),
		`{"id":"c1"}`, "devices/d1/ota/cancel"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := ParseProgress(b); err == nil && p.Validate() != nil {
			t.Fatalf("accepted invalid progress %+v", p)
		}
		if s, err := ParseStatus(b); err == nil && (len(s) == 0 || s.Validate() != nil) {
			t.Fatalf("accepted invalid status %v", s)
		}
		if c, err := ParseCommand(b); err == nil {
			if c.Validate() != nil {
				t.Fatalf("accepted invalid command %+v", c)
			}
			if c.Signed() {
				if _, err := DecodeSignature(c.Sig); err != nil || c.KeyID == "" || c.SHA256 == "" {
					t.Fatalf("accepted a signed command with sig %q key_id %q sha256 %q", c.Sig, c.KeyID, c.SHA256)
				}
			}
			again, err := json.Marshal(c)
			if err != nil {
				t.Fatalf("marshal accepted command: %v", err)
			}
			if len(again) <= MaxPayloadSize { // re-encoding may escape characters and grow
				c2, err := ParseCommand(again)
				if err != nil || c2.ID != c.ID || c2.SHA256 != c.SHA256 || c2.Sig != c.Sig || c2.KeyID != c.KeyID || c2.Size != c.Size {
					t.Fatalf("command does not round-trip: %+v -> %s -> %+v, %v", c, again, c2, err)
				}
			}
		}
		if c, err := ParseCancel(b); err == nil {
			if c.Validate() != nil {
				t.Fatalf("accepted invalid cancel %+v", c)
			}
			again, _ := json.Marshal(c)
			if c2, err := ParseCancel(again); err != nil || c2 != c {
				t.Fatalf("cancel does not round-trip: %+v -> %s -> %+v, %v", c, again, c2, err)
			}
		}
		if id, kind, err := ParseTopic(string(b)); err == nil {
			if ValidateDeviceID(id) != nil || TopicPrefix+id+"/"+kind != string(b) {
				t.Fatalf("ParseTopic(%q) = %q, %q", b, id, kind)
			}
		}
	})
}
