package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

func TestParseImport(t *testing.T) {
	type dev struct {
		line   int
		id     string
		labels map[string]string
	}
	tests := []struct {
		name string
		in   string
		want []dev    // the devices, when the file is good
		bad  []string // otherwise: the problems, each "line N: ..." (or the whole file's)
	}{
		{"csv with labels", "device,label.site,label.ring\npump-1,berlin,canary\n\npump-2,hamburg,\n# a comment\npump-3,,\n",
			[]dev{{2, "pump-1", map[string]string{"site": "berlin", "ring": "canary"}}, {4, "pump-2", map[string]string{"site": "hamburg"}}, {6, "pump-3", nil}}, nil},
		{"csv device only, CRLF, BOM, no final newline", "\uFEFFdevice\r\na\r\nb", []dev{{2, "a", nil}, {3, "b", nil}}, nil},
		{"csv columns in any order, quoted values", "label.note, device \n\"x, \"\"y\"\"\", d.1\n", []dev{{2, "d.1", map[string]string{"note": `x, "y"`}}}, nil},
		{"csv label value with = and spaces", "device,label.k\nd, a=b \n", []dev{{2, "d", map[string]string{"k": " a=b "}}}, nil},
		{"json lines", `{"device":"a","labels":{"site":"x"}}` + "\n\n" + `{"device":"b"}` + "\n" + `  {"labels":null,"device":"c"}`,
			[]dev{{1, "a", map[string]string{"site": "x"}}, {3, "b", nil}, {4, "c", nil}}, nil},

		{"empty", "", nil, []string{"no devices in the file"}},
		{"header only", "device\n# nothing\n", nil, []string{"no devices in the file"}},
		{"no header", "pump-1\npump-2\n", nil, []string{`line 1: the header: column 1 "pump-1" is neither device nor label.KEY`,
			"line 1: the header has no column device"}},
		{"header without device", "label.site\nx\n", nil, []string{"line 1: the header has no column device"}},
		{"header twice the same label", "device,label.a,label.a\n", nil, []string{"line 1: the header names the column label.a twice"}},
		{"header bad label key", "device,label.\n", nil, []string{`line 1: the header: column 2: label "=": the key must be 1 to 64`}},
		{"bad rows, all reported", "device,label.site\n" +
			"ok-1,a\n" +
			"bad id,a\n" + // 3
			"ok-2\n" + // 4
			"ok-3,\"unterminated\n" + // 5
			"ok-1,b\n" + // 6
			"ok-4," + strings.Repeat("v", 129) + "\n" + // 7
			"ok-5,a\x00b\n" + // 8
			"ok-6,\xff\n" + // 9
			strings.Repeat("x", 65) + ",a\n" + // 10
			"ok-7,a,b\n", // 11
			nil, []string{
				`line 3: device ID must be 1 to 64 characters of A-Z a-z 0-9 _ . -: "bad id"`,
				"line 4: 1 field(s), the header names 2 column(s)",
				"line 5: not CSV",
				"line 6: device ok-1 is also on line 2",
				`line 7: label "site": the value is longer than 128 bytes`,
				`line 8: label "site=a\x00b": control characters are not allowed`,
				"line 9: not valid UTF-8 text",
				"line 10: device ID must be",
				"line 11: 3 field(s), the header names 2 column(s)",
			}},
		{"json bad lines", `{"device":"a"}` + "\n" +
			`{"device":"b","labels":{"k":1}}` + "\n" + // 2
			`{"device":"c","color":"red"}` + "\n" + // 3
			`{"labels":{}}` + "\n" + // 4
			`{"device":"a"}` + "\n" + // 5
			`{"device":"d"} {"device":"e"}` + "\n" + // 6
			`{"device":"f","labels":{"k":"1","k":"2"}}` + "\n" + // 7
			`device,label.x` + "\n" + // 8
			`{"device":"g","labels":{"k":"\u0007"}}` + "\n" + // 9
			`{"device":"h/1"}`, // 10
			nil, []string{
				`line 2: label "k": the value must be a string`,
				`line 3: not a JSON object`,
				`line 4: device: missing`,
				`line 5: device a is also on line 1`,
				`line 6: not a JSON object {"device":"ID","labels":{"KEY":"VALUE"}}: more than one JSON value on the line`,
				`line 7: label "k" given twice`,
				`line 8: not a JSON object`,
				`line 9: label "k=\a": control characters are not allowed`,
				`line 10: device ID must be`,
			}},
		{"oversized", "device\n" + strings.Repeat("d\n", maxImportBytes/2), nil, []string{"larger than 32 MiB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows, bad := parseImport([]byte(tt.in))
			if tt.bad != nil {
				if len(bad) != len(tt.bad) {
					t.Fatalf("%d problems, want %d:\n%s", len(bad), len(tt.bad), badRowsMessage("f", bad))
				}
				for i, want := range tt.bad {
					if got := bad[i].String(); !strings.HasPrefix(got, want) {
						t.Errorf("problem %d = %q, want it to start with %q", i+1, got, want)
					}
				}
				return
			}
			if len(bad) > 0 {
				t.Fatalf("good file refused:\n%s", badRowsMessage("f", bad))
			}
			var got []dev
			for _, r := range rows {
				got = append(got, dev{r.Line, r.ID, r.Labels})
			}
			if !slices.EqualFunc(got, tt.want, func(a, b dev) bool {
				return a.line == b.line && a.id == b.id && maps.Equal(a.labels, b.labels)
			}) {
				t.Errorf("devices = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseImportLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString("device\n")
	for i := range maxImportDevices + 5 {
		fmt.Fprintf(&b, "d-%d\n", i)
	}
	_, bad := parseImport([]byte(b.String()))
	if len(bad) != 1 || bad[0].Line != maxImportDevices+2 || !strings.Contains(bad[0].Msg, "more than 100000 devices") {
		t.Errorf("%d devices: problems %v, want one at line %d", maxImportDevices+5, bad, maxImportDevices+2)
	}
	// A file of garbage is not reported line by line to the end.
	_, bad = parseImport(bytes.Repeat([]byte("device\n\xff\n"), 5000))
	if n := len(bad); n != maxImportProblems+1 || !strings.Contains(bad[n-1].Msg, "stopped reading") {
		t.Errorf("a file of garbage gave %d problems, want %d and a stop", n, maxImportProblems+1)
	}
}

// secretHex matches a device secret anywhere.
var secretHex = regexp.MustCompile(`[0-9a-f]{64}`)

func TestDevicesImport(t *testing.T) {
	ctx := context.Background()
	const preRegistered = "old-1"
	var good strings.Builder
	good.WriteString("device,label.site\n")
	for i := range 20 {
		fmt.Fprintf(&good, "imp-%02d,site-%d\n", i, i%3)
	}
	goodJSON := `{"device":"js-1","labels":{"ring":"canary"}}` + "\n" + `{"device":"js-2"}` + "\n"

	tests := []struct {
		name     string
		file     string   // the input
		stdin    bool     // give it on standard input (--file -) rather than in a file
		args     []string // more flags
		outExist bool     // --out names a file that exists
		code     int
		stderr   []string          // substrings of stderr
		want     map[string]string // devices imported, with their site label ("" for none)
	}{
		{name: "csv to stdout", file: good.String(), code: 0, stderr: []string{"imported 20 device(s)"},
			want: func() map[string]string {
				m := map[string]string{}
				for i := range 20 {
					m[fmt.Sprintf("imp-%02d", i)] = fmt.Sprintf("site-%d", i%3)
				}
				return m
			}()},
		{name: "json lines on stdin, secrets as JSON", file: goodJSON, stdin: true, args: []string{"--json"},
			want: map[string]string{"js-1": "", "js-2": ""}},
		{name: "secrets to --out", file: "device\nout-1\nout-2\n", args: []string{"--out", "OUT"},
			want: map[string]string{"out-1": "", "out-2": ""}},
		{name: "secrets to --out as JSON", file: "device\nout-1\n", args: []string{"--out", "OUT", "--json"},
			want: map[string]string{"out-1": ""}},
		{name: "bad rows: all reported, nothing imported", file: "device,label.site\nok-1,a\nbad id,a\nok-2,a,b\nok-1,c\nold-1,x\n",
			code: exitUsage, stderr: []string{"4 problem(s), nothing was imported", "line 3: device ID must be",
				"line 4: 3 field(s)", "line 5: device ok-1 is also on line 2", "line 6: device old-1 is already registered"}},
		{name: "duplicates", file: "device\na\nb\na\n", code: exitUsage, stderr: []string{"line 4: device a is also on line 2"}},
		{name: "existing device", file: "device\nnew-1\nold-1\nnew-2\n", code: exitFailure,
			stderr: []string{"1 problem(s), nothing was imported", "line 3: device old-1 is already registered", "--skip-existing"}},
		{name: "existing device skipped", file: "device\nnew-1\nold-1\nnew-2\n", args: []string{"--skip-existing"},
			stderr: []string{"skipped 1 device(s) already registered: old-1", "imported 2 device(s)"},
			want:   map[string]string{"new-1": "", "new-2": ""}},
		{name: "every device existing, skipped", file: "device\nold-1\n", args: []string{"--skip-existing"},
			stderr: []string{"nothing to import"}},
		{name: "--out exists", file: "device\nnew-1\n", args: []string{"--out", "OUT"}, outExist: true, code: exitUsage,
			stderr: []string{"already exists", "never overwrites"}},
		{name: "oversized", file: "device\n" + strings.Repeat("d-1234567\n", maxImportBytes/10+1), stdin: true, code: exitUsage,
			stderr: []string{"standard input: 1 problem(s)", "larger than 32 MiB"}},
		{name: "not UTF-8", file: "device,label.site\nnew-1,ok\nnew-2,caf\xe9\n", code: exitUsage,
			stderr: []string{"line 3: not valid UTF-8 text"}},
		{name: "binary", file: "\x00\x01\x02\xff\xfe", code: exitUsage, stderr: []string{"line 1: not valid UTF-8 text"}},
		{name: "empty", file: "", code: exitUsage, stderr: []string{"no devices in the file"}},
		{name: "--out in a missing directory", file: "device\nnew-1\n", args: []string{"--out", "/nonexistent/secrets.csv"},
			code: exitUsage, stderr: []string{"--out: open /nonexistent/secrets.csv: no such file"}},
		{name: "missing file", file: "", args: []string{"--file", "/nonexistent/devices.csv"}, code: exitUsage,
			stderr: []string{"--file: open /nonexistent/devices.csv: no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dbURL := testenv.DatabaseURL(t)
			st, err := store.Open(ctx, dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			oldHash, err := credential.Hash("old secret")
			if err != nil {
				t.Fatal(err)
			}
			if err := st.AddDevice(ctx, preRegistered, oldHash, map[string]string{"site": "old"}); err != nil {
				t.Fatal(err)
			}

			dir := t.TempDir()
			args := []string{"--temporal-address", "127.0.0.1:1", "--database-url", dbURL, "devices", "import"}
			if tt.stdin {
				importStdin = strings.NewReader(tt.file)
				t.Cleanup(func() { importStdin = os.Stdin })
				args = append(args, "--file", "-")
			} else if !slices.Contains(tt.args, "--file") {
				path := filepath.Join(dir, "devices.csv")
				if err := os.WriteFile(path, []byte(tt.file), 0o644); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--file", path)
			}
			outPath := filepath.Join(dir, "secrets.out")
			for _, a := range tt.args {
				if a == "OUT" {
					a = outPath
				}
				args = append(args, a)
			}
			if tt.outExist {
				if err := os.WriteFile(outPath, []byte("precious\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}

			r := runCLI(t, ctx, args...)
			r.check(t, tt.code, tt.stderr...)
			if secretHex.MatchString(r.stderr) {
				t.Errorf("a secret went to stderr:\n%s", r.stderr)
			}

			// The registry holds the pre-registered device, unchanged, and exactly the
			// imported ones.
			devs, err := st.ListDevices(ctx, ota.DeviceFilter{})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, d := range devs {
				if d.ID != preRegistered {
					got[d.ID] = d.Labels["site"]
				}
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("registered %v, want %v", got, tt.want)
			}
			if h, _, err := st.DeviceCredentials(ctx, preRegistered); err != nil || h != oldHash {
				t.Errorf("the pre-registered device's secret hash changed (%v)", err)
			}

			if tt.outExist {
				if b, _ := os.ReadFile(outPath); string(b) != "precious\n" {
					t.Errorf("--out overwrote an existing file: %q", b)
				}
			}
			if tt.code != 0 || len(tt.want) == 0 {
				if !tt.outExist {
					if _, err := os.Stat(outPath); err == nil {
						t.Errorf("a secrets file was left although nothing was imported")
					}
				}
				if secretHex.MatchString(r.stdout) {
					t.Errorf("secrets printed although nothing was imported:\n%s", r.stdout)
				}
				return
			}

			// The secrets, from stdout or --out: one per imported device, each authenticating
			// it against the stored hash.
			output, fromFile := r.stdout, slices.Contains(tt.args, "--out")
			if fromFile {
				fi, err := os.Stat(outPath)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("--out file has mode %v, want 0600", fi.Mode().Perm())
				}
				b, err := os.ReadFile(outPath)
				if err != nil {
					t.Fatal(err)
				}
				output = string(b)
				if secretHex.MatchString(r.stdout) || !strings.Contains(r.stdout, "Imported") {
					t.Errorf("with --out, stdout should hold a summary and no secret:\n%s", r.stdout)
				}
			}
			secrets := parseSecrets(t, output, slices.Contains(tt.args, "--json"))
			if !slices.Equal(slices.Sorted(maps.Keys(secrets)), slices.Sorted(maps.Keys(tt.want))) {
				t.Fatalf("secrets for %v, want for %v", slices.Sorted(maps.Keys(secrets)), slices.Sorted(maps.Keys(tt.want)))
			}
			for id, secret := range secrets {
				hash, disabled, err := st.DeviceCredentials(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if ok, err := credential.Verify(hash, secret); err != nil || !ok || disabled {
					t.Errorf("the secret of %s does not authenticate it (ok %v, err %v, disabled %v)", id, ok, err, disabled)
				}
				if ok, _ := credential.Verify(hash, "0"+secret[1:]); ok && secret[0] != '0' {
					t.Errorf("another secret authenticates %s", id)
				}
			}
		})
	}
}

// TestDevicesImportAllOrNothing checks that a failure of the transaction registers no device
// and leaves no secrets file: PostgreSQL refuses one device of the file (by a trigger, as a
// device registered meanwhile would be).
func TestDevicesImportAllOrNothing(t *testing.T) {
	ctx := context.Background()
	dbURL := testenv.DatabaseURL(t)
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.id = 'poison' THEN RAISE EXCEPTION 'poison refused'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER refuse_poison BEFORE INSERT ON devices FOR EACH ROW EXECUTE FUNCTION refuse_poison();`); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "devices.csv")
	if err := os.WriteFile(file, []byte("device\nfirst-1\nfirst-2\npoison\nlast-1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "secrets.csv")
	for _, args := range [][]string{{}, {"--out", out}} {
		r := runCLI(t, ctx, append([]string{"--database-url", dbURL, "devices", "import", "--file", file}, args...)...)
		r.check(t, exitFailure, "poison refused", "nothing was imported")
		if secretHex.MatchString(r.stdout + r.stderr) {
			t.Errorf("import %v printed secrets although it failed:\n%s\n%s", args, r.stdout, r.stderr)
		}
		if n, err := st.CountDevices(ctx, ota.DeviceFilter{}); err != nil || n != 0 {
			t.Errorf("import %v: %d devices registered (%v), want none", args, n, err)
		}
		if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("import %v left the secrets file (%v)", args, err)
		}
	}

	// The store's bulk insert is all or nothing too: a device already registered, or given
	// twice, fails it with ErrExists.
	for _, devs := range [][]store.NewDevice{
		{{ID: "a-1", SecretHash: "h"}, {ID: "a-2", SecretHash: "h"}, {ID: "a-1", SecretHash: "h"}},
		{{ID: "b-1", SecretHash: "h"}, {ID: "old", SecretHash: "h"}},
	} {
		if err := st.AddDevice(ctx, "old", "h", nil); err != nil && !errors.Is(err, store.ErrExists) {
			t.Fatal(err)
		}
		if err := st.AddDevices(ctx, devs); !errors.Is(err, store.ErrExists) {
			t.Errorf("AddDevices(%v) = %v, want ErrExists", devs, err)
		}
		if n, _ := st.CountDevices(ctx, ota.DeviceFilter{}); n != 1 {
			t.Errorf("AddDevices(%v) failed but left %d devices, want only the old one", devs, n)
		}
	}
	if err := st.AddDevices(ctx, []store.NewDevice{{ID: "bad id"}}); !errors.Is(err, protocol.ErrInvalidDeviceID) {
		t.Errorf("AddDevices with a bad ID = %v", err)
	}
}

// BenchmarkIssueSecrets measures issuing device secrets with their argon2id hashes, on every
// CPU as `devices import` does.
func BenchmarkIssueSecrets(b *testing.B) {
	for b.Loop() {
		if _, _, err := issueSecrets(context.Background(), 100); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*100)/1000, "ms/secret")
}

// BenchmarkDevicesImport imports 1,000 devices per operation through the command, into a
// fresh database: parsing, checking the registry, issuing the secrets, the bulk insert.
func BenchmarkDevicesImport(b *testing.B) {
	const n = 1000
	var file bytes.Buffer
	file.WriteString("device,label.site\n")
	for i := range n {
		fmt.Fprintf(&file, "bench-%05d,site-%d\n", i, i%7)
	}
	path := filepath.Join(b.TempDir(), "devices.csv")
	if err := os.WriteFile(path, file.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		dbURL := testenv.DatabaseURL(b)
		st, err := store.Open(ctx, dbURL) // migrated before the clock runs
		if err != nil {
			b.Fatal(err)
		}
		st.Close()
		out := filepath.Join(b.TempDir(), "secrets.csv")
		b.StartTimer()
		var stdout, stderr bytes.Buffer
		if code := run(ctx, []string{"starter", "--database-url", dbURL, "devices", "import", "--file", path, "--out", out}, &stdout, &stderr); code != 0 {
			b.Fatalf("exit code %d: %s", code, stderr.String())
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n)/1000, "ms/device")
}

// parseSecrets reads the secrets import writes: CSV device,secret or a JSON array.
func parseSecrets(t *testing.T, out string, asJSON bool) map[string]string {
	t.Helper()
	secrets := map[string]string{}
	if asJSON {
		var reps []secretReport
		if err := json.Unmarshal([]byte(out), &reps); err != nil {
			t.Fatalf("secrets are not a JSON array: %v\n%s", err, out)
		}
		for _, r := range reps {
			secrets[r.DeviceID] = r.Secret
		}
		return secrets
	}
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(recs) == 0 || !slices.Equal(recs[0], []string{"device", "secret"}) {
		t.Fatalf("secrets are not CSV device,secret (%v):\n%s", err, out)
	}
	for _, rec := range recs[1:] {
		if len(rec) != 2 || len(rec[1]) != 64 {
			t.Fatalf("bad secrets row %q", rec)
		}
		secrets[rec[0]] = rec[1]
	}
	return secrets
}

func TestDevicesImportUsage(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"without --file", []string{"devices", "import"}, []string{"missing required flag(s) --file"}},
		{"empty --file", []string{"devices", "import", "--file", ""}, []string{"--file must name a file"}},
		{"empty --out", []string{"devices", "import", "--file", "-", "--out", ""}, []string{"--out must name a new file"}},
		{"positional argument", []string{"devices", "import", "--file", "-", "more.csv"}, []string{`unexpected argument "more.csv"`}},
		{"without database", []string{"devices", "import", "--file", "-"}, []string{"DATABASE_URL"}},
		{"bad file without database", []string{"devices", "import", "--file", "-"}, []string{"line 2: device ID must be"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			importStdin = strings.NewReader("device\na b\n")
			if tt.name == "without database" {
				importStdin = strings.NewReader("device\nd-1\n")
			}
			t.Cleanup(func() { importStdin = os.Stdin })
			r := runCLI(t, context.Background(), offline(tt.args...)...)
			r.check(t, exitUsage, tt.want...)
			if r.stdout != "" {
				t.Errorf("a refused command wrote to stdout:\n%s", r.stdout)
			}
		})
	}
}

// FuzzImportFile checks the import parser on any file: it never panics; every problem names
// a line of the file (or the whole file); what it accepts are valid, distinct devices with
// valid labels, which read the same when written out again as CSV and as JSON lines.
func FuzzImportFile(f *testing.F) {
	for _, s := range []string{
		"device,label.site\npump-1,berlin\npump-2,\n",
		"\uFEFFdevice\r\na\r\n# c\n\nb",
		"label.x,device\n\"q,\"\"uote\",d\n",
		`{"device":"a","labels":{"k":"v"}}` + "\n" + `{"device":"b"}`,
		`{"device":"a","labels":{"k":"v","k":"w"}}`,
		"device\na b\na\na\n",
		"device,label.a,label.a\n",
		"pump-1\n",
		"device\nx,\"\n",
		"device,label.k\nd,\x00\n",
		"\xff\xfe",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rows, bad := parseImport(data)
		lines := bytes.Count(data, []byte("\n")) + 1
		for _, b := range bad {
			if b.Line < 0 || b.Line > lines || b.Msg == "" {
				t.Fatalf("problem %q is not about a line of the %d-line file", b.String(), lines)
			}
		}
		if len(bad) > 0 {
			return
		}
		if len(rows) == 0 {
			t.Fatal("no devices and no problem")
		}
		seen := map[string]bool{}
		for _, r := range rows {
			if err := protocol.ValidateDeviceID(r.ID); err != nil || seen[r.ID] {
				t.Fatalf("accepted device %q (%v, seen before %v)", r.ID, err, seen[r.ID])
			}
			seen[r.ID] = true
			for k, v := range r.Labels {
				if err := checkKeyValue("label", k, v); err != nil {
					t.Fatalf("accepted label %q=%q of %s: %v", k, v, r.ID, err)
				}
			}
		}
		// Written out again, in both formats, the devices read the same.
		keys, emptyValue := map[string]bool{}, false
		for _, r := range rows {
			for k, v := range r.Labels {
				keys[k] = true
				emptyValue = emptyValue || v == ""
			}
		}
		cols := slices.Sorted(maps.Keys(keys))
		var csvOut, jsonOut bytes.Buffer
		w := csv.NewWriter(&csvOut)
		w.Write(append([]string{"device"}, prefixed(cols)...))
		for _, r := range rows {
			rec := []string{r.ID}
			for _, k := range cols {
				rec = append(rec, r.Labels[k])
			}
			w.Write(rec)
			line, err := json.Marshal(map[string]any{"device": r.ID, "labels": r.Labels})
			if err != nil {
				t.Fatal(err)
			}
			jsonOut.Write(append(line, '\n'))
		}
		w.Flush()
		outputs := map[string][]byte{"JSON lines": jsonOut.Bytes()}
		if !emptyValue {
			outputs["CSV"] = csvOut.Bytes() // where an empty cell means no label
		}
		for format, out := range outputs {
			again, bad := parseImport(out)
			if len(bad) > 0 {
				t.Fatalf("%s written from the accepted devices is refused:\n%s\n%s", format, badRowsMessage("f", bad), out)
			}
			if !slices.EqualFunc(again, rows, func(a, b importRow) bool { return a.ID == b.ID && maps.Equal(a.Labels, b.Labels) }) {
				t.Fatalf("%s written from the accepted devices reads differently:\n%s", format, out)
			}
		}
	})
}

func prefixed(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = importLabelPrefix + k
	}
	return out
}
