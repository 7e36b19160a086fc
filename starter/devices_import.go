package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// Limits of one `devices import`.
const (
	maxImportBytes   = 32 << 20
	maxImportDevices = 100_000
	// maxImportProblems bounds the problems reported of one file: past it, the file is not
	// what was meant, and reading on would only fill memory and the terminal.
	maxImportProblems = 1000
)

// Columns of the CSV import format, and of the CSV the secrets are written in.
const (
	importDeviceColumn = "device"
	importLabelPrefix  = "label."
	importSecretColumn = "secret"
)

// importStdin is where `devices import --file -` reads; tests replace it.
var importStdin io.Reader = os.Stdin

const importDescription = `FILE (- for standard input) lists one device a line, as CSV or as JSON lines; a first
character { means JSON lines. Blank lines and lines starting with # are ignored.

  CSV: a header line naming the columns: device, and optional label.KEY columns; an
  empty label cell sets no label. Values are taken as written (quote them as CSV does).
      device,label.site,label.ring
      pump-17,berlin,canary
      pump-18,hamburg,

  JSON lines: one object a line, labels optional.
      {"device":"pump-17","labels":{"site":"berlin","ring":"canary"}}

Device IDs follow the protocol: 1 to 64 of A-Z a-z 0-9 _ . -. Label keys are 1 to 64
characters without = or spaces around them, values at most 128 bytes, neither with control
characters. At most 100000 devices and 32 MiB a file, of UTF-8 text.

Every row is checked first (syntax, device ID, labels, the same device twice, devices
already registered) and every bad row is reported with its line number. Only a file
without a bad row is imported, in one transaction: all devices or none.

Each device gets a new secret, shown only this once: as CSV device,secret on standard
output, or in --out FILE (created with mode 0600; an existing file is never overwritten);
--json writes a JSON array of {"device_id","secret"} instead. Only the argon2id hashes are
stored. Secrets never go to standard error.

Exit codes: 0 imported (or nothing left to import), 1 failed, or devices already registered
(without --skip-existing), 2 bad usage or bad rows: nothing was imported.`

func importCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:        "import",
		Usage:       "register many devices from a CSV or JSON-lines file and write their secrets (shown once)",
		UsageText:   "starter devices import --file FILE|- [--skip-existing] [--out FILE] [--json]",
		Description: importDescription,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "file", Usage: "read the devices from `FILE` (- for standard input; required)"},
			&cli.BoolFlag{Name: "skip-existing", Usage: "skip, and report, devices already registered instead of refusing the import"},
			&cli.StringFlag{Name: "out", Usage: "write the secrets to `FILE`, a new file of mode 0600, instead of standard output"},
			&cli.BoolFlag{Name: "json", Usage: "write the secrets as a JSON array instead of CSV"},
		},
		Before: requireFlags("file"),
		Action: e.importDevicesAction,
	}
}

// importRow is one device of an import file.
type importRow struct {
	Line   int
	ID     string
	Labels map[string]string
}

// rowError is what is wrong with one line of an import file (line 0: with the whole file).
type rowError struct {
	Line int
	Msg  string
	// Registered marks a device that is already registered: the only error that is not the
	// file's fault.
	Registered bool
}

func (r rowError) String() string {
	if r.Line == 0 {
		return r.Msg
	}
	return fmt.Sprintf("line %d: %s", r.Line, r.Msg)
}

func (e *appEnv) importDevicesAction(cCtx *cli.Context) error {
	name, outPath := cCtx.String("file"), cCtx.String("out")
	if name == "" {
		return usageErrorf(cCtx, "--file must name a file, or - for standard input")
	}
	if cCtx.IsSet("out") {
		if outPath == "" {
			return usageErrorf(cCtx, "--out must name a new file")
		}
		if _, err := os.Lstat(outPath); err == nil {
			return usageErrorf(cCtx, "--out %s already exists: starter never overwrites a file (it may hold secrets); give a new name", outPath)
		} else if !errors.Is(err, os.ErrNotExist) {
			return usageErrorf(cCtx, "--out: %v", err)
		}
	}
	var src io.Reader = importStdin
	what := "standard input"
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return usageErrorf(cCtx, "--file: %v", err)
		}
		defer f.Close()
		src, what = f, name
	}
	data, err := io.ReadAll(io.LimitReader(src, maxImportBytes+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", what, err)
	}
	rows, bad := parseImport(data)

	st, err := e.openStore(cCtx)
	if err != nil {
		if len(bad) > 0 {
			return usageErrorf(cCtx, "%s", badRowsMessage(what, bad))
		}
		return err
	}
	if len(bad) == 0 {
		// Before the secrets are issued: a broker that cannot be reached costs no wait.
		if _, err := e.brokerAdmin(cCtx); err != nil {
			return err
		}
	}
	ids := make([]string, len(rows))
	line := make(map[string]int, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
		line[r.ID] = r.Line
	}
	registered, err := st.RegisteredDevices(cCtx.Context, ids)
	if err != nil {
		return err
	}
	skip := make(map[string]bool, len(registered))
	for _, id := range registered {
		if cCtx.Bool("skip-existing") {
			skip[id] = true
			continue
		}
		bad = append(bad, rowError{Line: line[id], Registered: true,
			Msg: fmt.Sprintf("device %s is already registered", id)})
	}
	if len(bad) > 0 {
		slices.SortStableFunc(bad, func(a, b rowError) int { return a.Line - b.Line })
		if !slices.ContainsFunc(bad, func(r rowError) bool { return !r.Registered }) {
			return cli.Exit(badRowsMessage(what, bad), exitFailure)
		}
		return usageErrorf(cCtx, "%s", badRowsMessage(what, bad))
	}
	if len(skip) > 0 {
		fmt.Fprintf(e.errOut, "starter: skipped %d device(s) already registered: %s\n", len(skip), abbreviate(registered, 20))
		rows = slices.DeleteFunc(rows, func(r importRow) bool { return skip[r.ID] })
	}
	if len(rows) == 0 {
		fmt.Fprintln(e.errOut, "starter: nothing to import: every device of the file is already registered")
		return nil
	}
	return e.importDevices(cCtx, st, rows, outPath)
}

// importDevices issues the secrets, registers the devices in one transaction and writes the
// secrets: to --out before the transaction (the file, created first, is removed again if
// anything fails), so that no device is ever registered with a secret nobody has; to
// standard output after it.
func (e *appEnv) importDevices(cCtx *cli.Context, st *store.Store, rows []importRow, outPath string) (err error) {
	ctx := cCtx.Context
	var out *os.File
	if outPath != "" {
		out, err = os.OpenFile(outPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return usageErrorf(cCtx, "--out: %v (starter writes the secrets to a new file only)", err)
		}
		defer func() {
			if err != nil {
				out.Close()
				if rmErr := os.Remove(outPath); rmErr != nil {
					fmt.Fprintf(e.errOut, "starter: remove %s: %v (its secrets belong to no device)\n", outPath, rmErr)
				}
			}
		}()
	}
	if len(rows) > 1000 {
		fmt.Fprintf(e.errOut, "starter: issuing %d secrets (argon2id hashes, on %d CPUs)...\n", len(rows), runtime.GOMAXPROCS(0))
	}
	secrets, hashes, err := issueSecrets(ctx, len(rows))
	if err != nil {
		return fmt.Errorf("%w; nothing was imported", err)
	}
	devices := make([]store.NewDevice, len(rows))
	creds := make([]secretReport, len(rows))
	for i, r := range rows {
		devices[i] = store.NewDevice{ID: r.ID, SecretHash: hashes[i], Labels: r.Labels}
		creds[i] = secretReport{DeviceID: r.ID, Secret: secrets[i]}
	}
	asJSON := cCtx.Bool("json")
	if out != nil {
		err = writeSecrets(out, creds, asJSON)
		if err == nil {
			err = out.Sync() // the secrets are safely stored before the devices are registered
		}
		if err != nil {
			return fmt.Errorf("write %s: %w; nothing was imported", outPath, err)
		}
	}
	admin, err := e.brokerAdmin(cCtx)
	if err != nil {
		return err
	}
	// The broker accounts are created before the devices are committed: all or none.
	var created []string
	b := &brokerChange{admin: admin}
	err = st.AddDevicesThen(ctx, devices, b.then(func(ctx context.Context, a *brokeraccounts.Admin) error {
		var err error
		created, err = e.createAccounts(ctx, a, creds)
		return err
	}))
	if err != nil && len(created) > 0 {
		fmt.Fprintf(e.errOut, "starter: removing the %d broker accounts created...\n", len(created))
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(len(created))*brokeraccounts.DefaultTimeout)
		defer cancel()
		for _, id := range created {
			if rmErr := admin.RemoveDevice(ctx, id); rmErr != nil {
				fmt.Fprintf(e.errOut, "starter: remove the broker account of %s: %v (it belongs to no registered device)\n", id, rmErr)
			}
		}
	}
	if err != nil {
		if errors.Is(err, store.ErrExists) {
			return cli.Exit(fmt.Sprintf("%v; a device was registered meanwhile: nothing was imported (--skip-existing skips such devices)", err), exitFailure)
		}
		return fmt.Errorf("%w; nothing was imported", err)
	}
	if out != nil {
		if cerr := out.Close(); cerr != nil {
			// Synced already: the secrets are there.
			fmt.Fprintf(e.errOut, "starter: close %s: %v\n", outPath, cerr)
		}
		fmt.Fprintf(e.out, "Imported %d device(s). Their secrets are in %s (mode 0600) and are not shown again:\n"+
			"store them safely (only their hashes are kept). A device connects with client ID = username = its ID\n"+
			"and its secret as password.\n", len(rows), outPath)
		return nil
	}
	if err := writeSecrets(e.out, creds, asJSON); err != nil {
		return fmt.Errorf("%w; the %d devices are registered: issue new secrets with `starter devices rotate-secret`", err, len(rows))
	}
	fmt.Fprintf(e.errOut, "starter: imported %d device(s); their secrets are on standard output, shown only this once: store them now\n", len(rows))
	return nil
}

// createAccounts creates the broker accounts of newly imported devices, one at a time (each
// makes the broker rewrite its accounts file), saying how far it got every 10 seconds. It
// returns the devices whose account it created, also when it fails.
func (e *appEnv) createAccounts(ctx context.Context, a *brokeraccounts.Admin, creds []secretReport) ([]string, error) {
	created := make([]string, 0, len(creds))
	start, said := time.Now(), time.Now()
	for _, c := range creds {
		if err := a.AddDevice(ctx, c.DeviceID, c.Secret); err != nil {
			if errors.Is(err, brokeraccounts.ErrNotDevice) {
				return created, fmt.Errorf("the broker has an account named %s that is not a device's: %w", c.DeviceID, err)
			}
			return created, fmt.Errorf("create the broker account of %s: %w", c.DeviceID, err)
		}
		created = append(created, c.DeviceID)
		if time.Since(said) >= 10*time.Second {
			said = time.Now()
			rate := float64(len(created)) / time.Since(start).Seconds()
			fmt.Fprintf(e.errOut, "starter: broker accounts: %d of %d created (%.0f/s)\n", len(created), len(creds), rate)
		}
	}
	return created, nil
}

// badRowsMessage reports every bad row of an import.
func badRowsMessage(what string, bad []rowError) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problem(s), nothing was imported:", what, len(bad))
	registered := false
	for _, r := range bad {
		b.WriteString("\n  ")
		b.WriteString(r.String())
		registered = registered || r.Registered
	}
	if registered {
		b.WriteString("\n--skip-existing skips the devices already registered " +
			"(`starter devices rotate-secret` issues one of them a new secret).")
	}
	return b.String()
}

// writeSecrets writes device secrets as CSV device,secret with a header line, or as a JSON
// array with one device a line.
func writeSecrets(w io.Writer, creds []secretReport, asJSON bool) error {
	var b bytes.Buffer
	if asJSON {
		b.WriteString("[")
		for i, c := range creds {
			line, err := json.Marshal(c)
			if err != nil {
				return fmt.Errorf("encode the secret of %s: %w", c.DeviceID, err)
			}
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n  ")
			b.Write(line)
		}
		if len(creds) > 0 {
			b.WriteString("\n")
		}
		b.WriteString("]\n")
	} else {
		cw := csv.NewWriter(&b)
		cw.Write([]string{importDeviceColumn, importSecretColumn})
		for _, c := range creds {
			cw.Write([]string{c.DeviceID, c.Secret})
		}
		cw.Flush()
		if err := cw.Error(); err != nil {
			return fmt.Errorf("encode the secrets: %w", err)
		}
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("write the secrets: %w", err)
	}
	return nil
}

// issueSecrets returns n new secrets and their argon2id hashes, hashed on every CPU: at
// about 5 ms a hash, 10,000 devices take 50 s on one.
func issueSecrets(ctx context.Context, n int) (secrets, hashes []string, err error) {
	secrets, hashes = make([]string, n), make([]string, n)
	var (
		next     atomic.Int64
		errOnce  sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	for range min(runtime.GOMAXPROCS(0), n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				s, h, err := newSecret()
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					next.Store(int64(n))
					return
				}
				secrets[i], hashes[i] = s, h
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("issue secrets: %w", err)
	}
	return secrets, hashes, nil
}

// parseImport reads an import file (see importDescription) and returns its devices, and
// every problem of the file with its line number. Devices are returned only from good rows;
// the file may be imported only when there is no problem.
func parseImport(data []byte) ([]importRow, []rowError) {
	if len(data) > maxImportBytes {
		return nil, []rowError{{Msg: fmt.Sprintf("larger than %d MiB: split it into several imports", maxImportBytes>>20)}}
	}
	data = bytes.TrimPrefix(data, []byte("\uFEFF")) // the byte order mark spreadsheets write
	p := importParser{seen: map[string]int{}}
	for n := 1; len(data) > 0; n++ {
		if len(p.bad) >= maxImportProblems {
			p.bad = append(p.bad, rowError{Line: n, Msg: fmt.Sprintf("%d problems before this line: stopped reading", len(p.bad))})
			break
		}
		var line []byte
		line, data, _ = bytes.Cut(data, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if !utf8.Valid(line) {
			p.fail(n, "not valid UTF-8 text")
			continue
		}
		text := string(line)
		if t := strings.TrimSpace(text); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if !p.parseLine(n, text) {
			break
		}
	}
	if len(p.bad) == 0 && len(p.rows) == 0 {
		p.bad = append(p.bad, rowError{Msg: "no devices in the file"})
	}
	if len(p.bad) > 0 {
		// Devices from good rows still help to report those already registered.
		return p.rows, p.bad
	}
	return p.rows, nil
}

// importParser is the state of parseImport.
type importParser struct {
	format  string   // "" before the first line, then "csv" or "jsonl"
	columns []string // CSV: "" for the device column, else the label key
	seen    map[string]int
	rows    []importRow
	bad     []rowError
}

func (p *importParser) fail(line int, format string, args ...any) {
	p.bad = append(p.bad, rowError{Line: line, Msg: fmt.Sprintf(format, args...)})
}

// parseLine parses one line that is neither blank nor a comment; it returns false when the
// rest of the file cannot be read (a bad CSV header).
func (p *importParser) parseLine(n int, text string) bool {
	if p.format == "" {
		if strings.HasPrefix(strings.TrimSpace(text), "{") {
			p.format = "jsonl"
		} else {
			p.format = "csv"
			return p.parseHeader(n, text)
		}
	}
	var row importRow
	var ok bool
	if p.format == "jsonl" {
		row, ok = p.parseJSONLine(n, text)
	} else {
		row, ok = p.parseCSVLine(n, text)
	}
	if !ok {
		return true
	}
	if first, dup := p.seen[row.ID]; dup {
		p.fail(n, "device %s is also on line %d", row.ID, first)
		return true
	}
	if len(p.rows) == maxImportDevices {
		p.fail(n, "more than %d devices: at most %d can be imported at once, split the file", maxImportDevices, maxImportDevices)
		return false
	}
	p.seen[row.ID] = n
	p.rows = append(p.rows, row)
	return true
}

// csvFields splits one line of CSV into its fields.
func csvFields(text string) ([]string, error) {
	r := csv.NewReader(strings.NewReader(text))
	r.FieldsPerRecord = -1
	fields, err := r.Read()
	if err != nil {
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("not CSV: column %d: %w", pe.Column, pe.Err)
		}
		return nil, fmt.Errorf("not CSV: %w", err)
	}
	if _, err := r.Read(); err != io.EOF {
		// A line break inside quotes: one device a line.
		return nil, errors.New("not CSV of one line (a quoted value spans lines)")
	}
	return fields, nil
}

func (p *importParser) parseHeader(n int, text string) bool {
	fields, err := csvFields(text)
	if err != nil {
		p.fail(n, "the header: %v", err)
		return false
	}
	ok, hasDevice := true, false
	keys := map[string]bool{}
	for i, f := range fields {
		f = strings.TrimSpace(f)
		key, isLabel := strings.CutPrefix(f, importLabelPrefix)
		key = strings.TrimSpace(key)
		switch {
		case f == importDeviceColumn && !hasDevice:
			hasDevice = true
			p.columns = append(p.columns, "")
			continue
		case f == importDeviceColumn:
			p.fail(n, "the header names the column %s twice", importDeviceColumn)
		case !isLabel:
			p.fail(n, "the header: column %d %q is neither %s nor %sKEY (the first line names the columns)",
				i+1, protocol.Truncate(f, 80), importDeviceColumn, importLabelPrefix)
		case keys[key]:
			p.fail(n, "the header names the column %s twice", protocol.Truncate(f, 80))
		default:
			if err := checkKeyValue("label", key, ""); err != nil {
				p.fail(n, "the header: column %d: %v", i+1, err)
			} else {
				keys[key] = true
				p.columns = append(p.columns, key)
				continue
			}
		}
		ok = false
	}
	if !hasDevice {
		p.fail(n, "the header has no column %s (the first line names the columns: %s[,%sKEY...])",
			importDeviceColumn, importDeviceColumn, importLabelPrefix)
		ok = false
	}
	return ok
}

func (p *importParser) parseCSVLine(n int, text string) (importRow, bool) {
	row := importRow{Line: n}
	fields, err := csvFields(text)
	if err != nil {
		p.fail(n, "%v", err)
		return row, false
	}
	if len(fields) != len(p.columns) {
		p.fail(n, "%d field(s), the header names %d column(s)", len(fields), len(p.columns))
		return row, false
	}
	ok := true
	for i, key := range p.columns {
		v := fields[i]
		switch {
		case key == "":
			row.ID = strings.TrimSpace(v)
			if err := protocol.ValidateDeviceID(row.ID); err != nil {
				p.fail(n, "%v", err)
				ok = false
			}
		case v != "":
			if err := checkKeyValue("label", key, v); err != nil {
				p.fail(n, "%v", err)
				ok = false
				continue
			}
			if row.Labels == nil {
				row.Labels = map[string]string{}
			}
			row.Labels[key] = v
		}
	}
	return row, ok
}

// importJSONLine is one line of the JSON-lines import format.
type importJSONLine struct {
	Device *string         `json:"device"`
	Labels json.RawMessage `json:"labels"`
}

func (p *importParser) parseJSONLine(n int, text string) (importRow, bool) {
	row := importRow{Line: n}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	var l importJSONLine
	err := dec.Decode(&l)
	if err == nil {
		if dec.Decode(&json.RawMessage{}) != io.EOF {
			err = errors.New("more than one JSON value on the line")
		}
	}
	if err != nil {
		p.fail(n, `not a JSON object {"device":"ID","labels":{"KEY":"VALUE"}}: %v`, err)
		return row, false
	}
	if l.Device == nil {
		p.fail(n, `device: missing ("device":"ID")`)
		return row, false
	}
	row.ID = *l.Device
	ok := true
	if err := protocol.ValidateDeviceID(row.ID); err != nil {
		p.fail(n, "%v", err)
		ok = false
	}
	labels, err := decodeLabels(l.Labels)
	if err != nil {
		p.fail(n, "%v", err)
		return row, false
	}
	for k, v := range labels {
		if err := checkKeyValue("label", k, v); err != nil {
			p.fail(n, "%v", err)
			ok = false
		}
	}
	row.Labels = labels
	return row, ok
}

// decodeLabels decodes a JSON object of string values, refusing a key given twice (which
// encoding/json would let the last win); null or nothing is no labels.
func decodeLabels(raw json.RawMessage) (map[string]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	const want = `labels: want an object of strings {"KEY":"VALUE"}`
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New(want)
	}
	labels := map[string]string{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", want, err)
		}
		k, isString := t.(string)
		if !isString {
			return nil, errors.New(want)
		}
		t, err = dec.Token()
		v, isString := t.(string)
		if err != nil || !isString {
			return nil, fmt.Errorf("label %q: the value must be a string", protocol.Truncate(k, 80))
		}
		if _, dup := labels[k]; dup {
			return nil, fmt.Errorf("label %q given twice", protocol.Truncate(k, 80))
		}
		labels[k] = v
	}
	if len(labels) == 0 {
		return nil, nil
	}
	return labels, nil
}
