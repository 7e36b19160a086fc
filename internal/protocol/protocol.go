// Package protocol defines the OTAflow device protocol (../shared/PROTOCOL.md, version 1):
// MQTT topics, payloads, error codes and upgrade states, with the parsers and validators
// that every process (worker, bridge, starter, device simulator) shares.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxPayloadSize is the largest payload, in bytes, that a device may send or receive.
const MaxPayloadSize = 4096

// MaxDescLength is the longest desc, in characters, a progress report may carry.
const MaxDescLength = 256

// Topic kinds, the last part(s) of a device topic.
const (
	// KindCommand is the cloud -> device upgrade command topic suffix.
	KindCommand = "ota/command"
	// KindProgress is the device -> cloud progress topic suffix.
	KindProgress = "ota/progress"
	// KindStatus is the device -> cloud status topic suffix.
	KindStatus = "status"
	// KindCancel is the cloud -> device cancel topic suffix (protocol 1.1).
	KindCancel = "ota/cancel"
)

// TopicPrefix starts every device topic.
const TopicPrefix = "devices/"

// SharedGroup is the shared-subscription group the bridges use to split the load.
const SharedGroup = "otaflow"

// Error codes a device reports in Progress.Progress.
const (
	CodeDownloadFailed = -1
	CodeMD5Mismatch    = -2
	CodeInstallFailed  = -3
	CodeOther          = -4
)

// CodeText names an error code for people.
func CodeText(code int) string {
	switch code {
	case CodeDownloadFailed:
		return "download failed"
	case CodeMD5Mismatch:
		return "md5 check failed"
	case CodeInstallFailed:
		return "install/flash failed"
	case CodeOther:
		return "failed for another reason"
	case 0:
		return ""
	default:
		return fmt.Sprintf("unknown error code %d", code)
	}
}

// State is the cloud-side state of one device upgrade.
type State string

// Upgrade states, as PROTOCOL.md names them.
const (
	StatePending     State = "pending"
	StateSent        State = "sent"
	StateDownloading State = "downloading"
	StateDownloaded  State = "downloaded"
	StateSucceeded   State = "succeeded"
	StateFailed      State = "failed"
	StateTimedOut    State = "timed_out"
	StateCanceled    State = "canceled"
	StateSkipped     State = "skipped"
)

// AllStates lists every state in lifecycle order, for reports that count by state.
var AllStates = []State{StatePending, StateSent, StateDownloading, StateDownloaded,
	StateSucceeded, StateSkipped, StateFailed, StateTimedOut, StateCanceled}

// Final reports whether no further change can happen in this state.
func (s State) Final() bool {
	switch s {
	case StateSucceeded, StateFailed, StateTimedOut, StateCanceled, StateSkipped:
		return true
	}
	return false
}

// Successful reports whether the device ends on the target version in this state.
func (s State) Successful() bool { return s == StateSucceeded || s == StateSkipped }

var deviceIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// ErrInvalidDeviceID is returned for a device ID that breaks the protocol's rule.
var ErrInvalidDeviceID = errors.New("device ID must be 1 to 64 characters of A-Z a-z 0-9 _ . -")

// ValidateDeviceID checks a device ID against PROTOCOL.md.
func ValidateDeviceID(id string) error {
	if !deviceIDPattern.MatchString(id) {
		return fmt.Errorf("%w: %q", ErrInvalidDeviceID, truncate(id, 80))
	}
	return nil
}

// CommandTopic is the topic on which device id receives upgrade commands.
func CommandTopic(id string) string { return TopicPrefix + id + "/" + KindCommand }

// CancelTopic is the topic on which device id receives cancellations (protocol 1.1).
func CancelTopic(id string) string { return TopicPrefix + id + "/" + KindCancel }

// ProgressTopic is the topic on which device id reports upgrade progress.
func ProgressTopic(id string) string { return TopicPrefix + id + "/" + KindProgress }

// StatusTopic is the topic on which device id reports its versions.
func StatusTopic(id string) string { return TopicPrefix + id + "/" + KindStatus }

// ProgressFilter matches every device's progress topic.
const ProgressFilter = TopicPrefix + "+/" + KindProgress

// StatusFilter matches every device's status topic.
const StatusFilter = TopicPrefix + "+/" + KindStatus

// SharedFilter turns a filter into a shared subscription of SharedGroup.
func SharedFilter(filter string) string { return "$share/" + SharedGroup + "/" + filter }

// ErrBadTopic is returned for a topic that is not a device topic OTAflow knows.
var ErrBadTopic = errors.New("not an OTAflow device topic")

// ParseTopic splits a device topic into its device ID and kind (KindProgress, KindStatus or
// KindCommand).
func ParseTopic(topic string) (deviceID, kind string, err error) {
	rest, ok := strings.CutPrefix(topic, TopicPrefix)
	if !ok {
		return "", "", fmt.Errorf("%w: %q", ErrBadTopic, truncate(topic, 120))
	}
	id, kind, ok := strings.Cut(rest, "/")
	if !ok {
		return "", "", fmt.Errorf("%w: %q", ErrBadTopic, truncate(topic, 120))
	}
	switch kind {
	case KindProgress, KindStatus, KindCommand:
	default:
		return "", "", fmt.Errorf("%w: %q", ErrBadTopic, truncate(topic, 120))
	}
	if err := ValidateDeviceID(id); err != nil {
		return "", "", err
	}
	return id, kind, nil
}

// UpgradeCommand is what the cloud sends a device to start one upgrade attempt.
type UpgradeCommand struct {
	ID        string    `json:"id"`
	Type      string    `json:"type"`
	Version   string    `json:"version"`
	URL       string    `json:"url"`
	MD5       string    `json:"md5"`
	Size      int64     `json:"size"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Progress is a device's report of download progress or an error code.
type Progress struct {
	ID       string `json:"id,omitempty"`
	Type     string `json:"type"`
	Version  string `json:"version"`
	Progress int    `json:"progress"`
	Desc     string `json:"desc,omitempty"`
}

// IsError reports whether the progress carries an error code rather than a percentage.
func (p Progress) IsError() bool { return p.Progress < 0 }

// Status is a device's report of its current versions, keyed as agreed with the business system.
type Status map[string]string

// VersionKey is the status key that holds the version of an upgrade type, unless the upgrade
// names another.
func VersionKey(upgradeType string) string { return upgradeType + "_ver" }

// ErrInvalidMessage wraps every validation failure of a payload.
var ErrInvalidMessage = errors.New("invalid message")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidMessage, fmt.Sprintf(format, args...))
}

// checkEnvelope applies the rules every payload shares: size, UTF-8, one JSON object.
func checkEnvelope(payload []byte) error {
	if len(payload) > MaxPayloadSize {
		return invalid("payload is %d bytes, more than %d", len(payload), MaxPayloadSize)
	}
	if len(bytes.TrimSpace(payload)) == 0 {
		return invalid("empty payload")
	}
	if !utf8.Valid(payload) {
		return invalid("payload is not UTF-8")
	}
	return nil
}

// decodeObject decodes one JSON object into raw fields, rejecting trailing data.
func decodeObject(payload []byte) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(payload))
	if err := dec.Decode(&fields); err != nil {
		return nil, invalid("malformed JSON object: %v", err)
	}
	if fields == nil {
		return nil, invalid("payload is not a JSON object")
	}
	if dec.More() {
		return nil, invalid("trailing data after the JSON object")
	}
	return fields, nil
}

func stringField(fields map[string]json.RawMessage, name string, required bool) (string, error) {
	raw, ok := fields[name]
	if !ok || string(raw) == "null" {
		if required {
			return "", invalid("%q is missing", name)
		}
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", invalid("%q must be a string", name)
	}
	return s, nil
}

// ParseProgress validates and decodes a progress payload.
func ParseProgress(payload []byte) (Progress, error) {
	if err := checkEnvelope(payload); err != nil {
		return Progress{}, err
	}
	fields, err := decodeObject(payload)
	if err != nil {
		return Progress{}, err
	}
	var p Progress
	if p.ID, err = stringField(fields, "id", false); err != nil {
		return Progress{}, err
	}
	if p.Type, err = stringField(fields, "type", true); err != nil {
		return Progress{}, err
	}
	if p.Version, err = stringField(fields, "version", true); err != nil {
		return Progress{}, err
	}
	if p.Desc, err = stringField(fields, "desc", false); err != nil {
		return Progress{}, err
	}
	raw, ok := fields["progress"]
	if !ok {
		return Progress{}, invalid(`"progress" is missing`)
	}
	var n json.Number
	if len(raw) == 0 || raw[0] == '"' { // json.Number would take a quoted number
		return Progress{}, invalid(`"progress" must be an integer`)
	}
	if err := json.Unmarshal(raw, &n); err != nil {
		return Progress{}, invalid(`"progress" must be an integer`)
	}
	v, err := n.Int64()
	if err != nil {
		return Progress{}, invalid(`"progress" must be an integer, not %s`, truncate(n.String(), 20))
	}
	p.Progress = int(v)
	return p, p.Validate()
}

// Validate checks a progress report's field values.
func (p Progress) Validate() error {
	switch {
	case p.Type == "" || len(p.Type) > 32:
		return invalid(`"type" must be 1 to 32 characters`)
	case p.Version == "" || len(p.Version) > 64:
		return invalid(`"version" must be 1 to 64 characters`)
	case len(p.ID) > 64:
		return invalid(`"id" must be at most 64 characters`)
	case utf8.RuneCountInString(p.Desc) > MaxDescLength:
		return invalid(`"desc" is longer than %d characters`, MaxDescLength)
	case p.Progress == 0 || p.Progress > 100 || p.Progress < CodeOther:
		return invalid(`"progress" must be 1..100 or an error code -1..-4, not %d`, p.Progress)
	}
	return nil
}

// ParseStatus validates and decodes a status payload: a flat object of string values.
func ParseStatus(payload []byte) (Status, error) {
	if err := checkEnvelope(payload); err != nil {
		return nil, err
	}
	fields, err := decodeObject(payload)
	if err != nil {
		return nil, err
	}
	if len(fields) == 0 {
		return nil, invalid("status reports no versions")
	}
	st := make(Status, len(fields))
	for k, raw := range fields {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, invalid("status value %q must be a string", truncate(k, 40))
		}
		st[k] = s
	}
	return st, st.Validate()
}

// Validate checks a status report's keys and values.
func (s Status) Validate() error {
	for k, v := range s {
		if k == "" || len(k) > 64 {
			return invalid("status key %q must be 1 to 64 characters", truncate(k, 40))
		}
		if len(v) > 128 {
			return invalid("status value of %q is longer than 128 bytes", truncate(k, 40))
		}
	}
	return nil
}

// ParseCommand validates and decodes an upgrade command, as a device does.
func ParseCommand(payload []byte) (UpgradeCommand, error) {
	if err := checkEnvelope(payload); err != nil {
		return UpgradeCommand{}, err
	}
	if _, err := decodeObject(payload); err != nil {
		return UpgradeCommand{}, err
	}
	var c UpgradeCommand
	if err := json.Unmarshal(payload, &c); err != nil {
		return UpgradeCommand{}, invalid("wrong field type: %v", err)
	}
	return c, c.Validate()
}

var md5Pattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ValidateMD5 checks an md5 digest is 32 lowercase hex digits.
func ValidateMD5(md5 string) error {
	if !md5Pattern.MatchString(md5) {
		return invalid("md5 must be 32 lowercase hex digits, got %q", truncate(md5, 40))
	}
	return nil
}

// Validate checks an upgrade command's fields.
func (c UpgradeCommand) Validate() error {
	switch {
	case c.ID == "" || len(c.ID) > 64:
		return invalid(`"id" must be 1 to 64 characters`)
	case c.Type == "" || len(c.Type) > 32:
		return invalid(`"type" must be 1 to 32 characters`)
	case c.Version == "" || len(c.Version) > 64:
		return invalid(`"version" must be 1 to 64 characters`)
	case c.URL == "" || len(c.URL) > 2048:
		return invalid(`"url" must be 1 to 2048 characters`)
	case c.Size <= 0:
		return invalid(`"size" must be more than 0`)
	}
	return ValidateMD5(c.MD5)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
