// Package protocol defines the OTAflow device protocol (docs/PROTOCOL.md, version 1.1):
// MQTT topics, payloads, error codes and upgrade states, with the parsers and validators
// that every process (worker, bridge, starter, device simulator) shares.
package protocol

import (
	"bytes"
	"encoding/base64"
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

// Limits of PROTOCOL.md 1.1 on field values. Lengths in characters, except where bytes.
const (
	// MaxDescLength is the longest desc a progress report may carry.
	MaxDescLength = 256
	// MaxIDLength bounds a command ID (and a progress report's id).
	MaxIDLength = 64
	// MaxTypeLength bounds an upgrade type, of the characters typePattern allows.
	MaxTypeLength = 32
	// MaxVersionLength bounds a version.
	MaxVersionLength = 64
	// MaxStatusKeys bounds how many versions one status report carries.
	MaxStatusKeys = 64
	// MaxStatusKeyLength bounds a status key.
	MaxStatusKeyLength = 64
	// MaxStatusValueBytes bounds a status value, in bytes.
	MaxStatusValueBytes = 128
)

// typePattern is what an upgrade type may be: 1 to MaxTypeLength of a-z 0-9 _ -.
var typePattern = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)

// validateFields checks the fields a command and a progress report share.
func validateFields(id, typ, version string, idRequired bool) error {
	if n := utf8.RuneCountInString(id); n > MaxIDLength || (idRequired && n == 0) {
		if idRequired {
			return invalid(`"id" must be 1 to %d characters`, MaxIDLength)
		}
		return invalid(`"id" must be at most %d characters`, MaxIDLength)
	}
	if err := ValidateType(typ); err != nil {
		return err
	}
	return ValidateVersion(version)
}

// ValidateType checks an upgrade type is 1 to MaxTypeLength characters of a-z 0-9 _ -.
func ValidateType(typ string) error {
	if !typePattern.MatchString(typ) {
		return invalid(`"type" must be 1 to %d characters of a-z 0-9 _ -, not %q`, MaxTypeLength, Truncate(typ, 40))
	}
	return nil
}

// ValidateVersion checks a version is 1 to MaxVersionLength characters.
func ValidateVersion(version string) error {
	if n := utf8.RuneCountInString(version); n == 0 || n > MaxVersionLength {
		return invalid(`"version" must be 1 to %d characters`, MaxVersionLength)
	}
	return nil
}

// Topic kinds, the last part(s) of a device topic.
const (
	// KindCommand is the cloud -> device upgrade command topic suffix.
	KindCommand = "ota/command"
	// KindProgress is the device -> cloud progress topic suffix.
	KindProgress = "ota/progress"
	// KindStatus is the device -> cloud status topic suffix.
	KindStatus = "status"
	// KindCancel is the cloud -> device cancel topic suffix (PROTOCOL.md 1.1).
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

var deviceIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// ErrInvalidDeviceID is returned for a device ID that breaks the protocol's rule.
var ErrInvalidDeviceID = errors.New("device ID must be 1 to 64 characters of A-Z a-z 0-9 _ . -")

// ValidateDeviceID checks a device ID against PROTOCOL.md.
func ValidateDeviceID(id string) error {
	if !deviceIDPattern.MatchString(id) {
		return fmt.Errorf("%w: %q", ErrInvalidDeviceID, Truncate(id, 80))
	}
	return nil
}

// CommandTopic is the topic on which device id receives upgrade commands.
func CommandTopic(id string) string { return TopicPrefix + id + "/" + KindCommand }

// ProgressTopic is the topic on which device id reports upgrade progress.
func ProgressTopic(id string) string { return TopicPrefix + id + "/" + KindProgress }

// StatusTopic is the topic on which device id reports its versions.
func StatusTopic(id string) string { return TopicPrefix + id + "/" + KindStatus }

// CancelTopic is the topic on which device id receives cancel messages (PROTOCOL.md 1.1).
func CancelTopic(id string) string { return TopicPrefix + id + "/" + KindCancel }

// ProgressFilter matches every device's progress topic.
const ProgressFilter = TopicPrefix + "+/" + KindProgress

// StatusFilter matches every device's status topic.
const StatusFilter = TopicPrefix + "+/" + KindStatus

// SharedFilter turns a filter into a shared subscription of SharedGroup.
func SharedFilter(filter string) string { return "$share/" + SharedGroup + "/" + filter }

// ErrBadTopic is returned for a topic that is not a device topic OTAflow knows.
var ErrBadTopic = errors.New("not an OTAflow device topic")

// ParseTopic splits a device topic into its device ID and kind (KindProgress, KindStatus,
// KindCommand or KindCancel). Devices publish only on the first two: a caller that handles
// device messages refuses the others.
func ParseTopic(topic string) (deviceID, kind string, err error) {
	rest, ok := strings.CutPrefix(topic, TopicPrefix)
	if !ok {
		return "", "", fmt.Errorf("%w: %q", ErrBadTopic, Truncate(topic, 120))
	}
	id, kind, ok := strings.Cut(rest, "/")
	if !ok {
		return "", "", fmt.Errorf("%w: %q", ErrBadTopic, Truncate(topic, 120))
	}
	switch kind {
	case KindProgress, KindStatus, KindCommand, KindCancel:
	default:
		return "", "", fmt.Errorf("%w: %q", ErrBadTopic, Truncate(topic, 120))
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

	// PROTOCOL.md 1.1, optional: left out of the JSON when empty, so that a command without
	// them is byte for byte what version 1 devices have always received.

	// SHA256 is the package's SHA-256, 64 lowercase hex digits.
	SHA256 string `json:"sha256,omitempty"`
	// Sig is the publisher's Ed25519 signature over the package's type, version, size and
	// sha256 (internal/pkgsig), 64 bytes in standard base64 with padding. It comes with KeyID
	// and SHA256.
	Sig string `json:"sig,omitempty"`
	// KeyID names the trusted public key that verifies Sig.
	KeyID string `json:"key_id,omitempty"`
}

// Signed reports whether the command carries a signature.
func (c UpgradeCommand) Signed() bool { return c.Sig != "" }

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

// Reason is a validation error's text without the "invalid message: " that starts it, for
// messages about a value that did not come in a message (a flag, a file).
func Reason(err error) string {
	return strings.TrimPrefix(err.Error(), ErrInvalidMessage.Error()+": ")
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
		return Progress{}, invalid(`"progress" must be an integer, not %s`, Truncate(n.String(), 20))
	}
	p.Progress = int(v)
	return p, p.Validate()
}

// Validate checks a progress report's field values.
func (p Progress) Validate() error {
	if err := validateFields(p.ID, p.Type, p.Version, false); err != nil {
		return err
	}
	switch {
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
	if len(fields) > MaxStatusKeys {
		return nil, invalid("status reports %d versions, more than %d", len(fields), MaxStatusKeys)
	}
	st := make(Status, len(fields))
	for k, raw := range fields {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, invalid("status value %q must be a string", Truncate(k, 40))
		}
		st[k] = s
	}
	return st, st.Validate()
}

// Validate checks a status report's keys and values.
func (s Status) Validate() error {
	if len(s) > MaxStatusKeys {
		return invalid("status reports %d versions, more than %d", len(s), MaxStatusKeys)
	}
	for k, v := range s {
		if n := utf8.RuneCountInString(k); n == 0 || n > MaxStatusKeyLength {
			return invalid("status key %q must be 1 to %d characters", Truncate(k, 40), MaxStatusKeyLength)
		}
		if len(v) > MaxStatusValueBytes {
			return invalid("status value of %q is longer than %d bytes", Truncate(k, 40), MaxStatusValueBytes)
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

var (
	md5Pattern    = regexp.MustCompile(`^[0-9a-f]{32}$`)
	sha256Pattern = regexp.MustCompile(`^[0-9a-f]{64}$`)
	keyIDPattern  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	// sigPattern is 64 bytes in standard base64 with padding: 86 characters and "==".
	sigPattern = regexp.MustCompile(`^[A-Za-z0-9+/]{86}==$`)
)

// Limits of PROTOCOL.md 1.1 on the package integrity fields.
const (
	// SignatureSize is the size of an Ed25519 signature, in bytes.
	SignatureSize = 64
	// MaxKeyIDLength bounds a key_id.
	MaxKeyIDLength = 64
)

// ValidateMD5 checks an md5 digest is 32 lowercase hex digits.
func ValidateMD5(md5 string) error {
	if !md5Pattern.MatchString(md5) {
		return invalid("md5 must be 32 lowercase hex digits, got %q", Truncate(md5, 40))
	}
	return nil
}

// ValidateSHA256 checks a sha256 digest is 64 lowercase hex digits.
func ValidateSHA256(sum string) error {
	if !sha256Pattern.MatchString(sum) {
		return invalid("sha256 must be 64 lowercase hex digits, got %q", Truncate(sum, 72))
	}
	return nil
}

// ValidateKeyID checks a key_id is 1 to 64 characters of A-Z a-z 0-9 _ . -, which also makes
// it a safe file name (<key_id>.pub).
func ValidateKeyID(id string) error {
	if !keyIDPattern.MatchString(id) {
		return invalid("key_id must be 1 to %d characters of A-Z a-z 0-9 _ . -, got %q", MaxKeyIDLength, Truncate(id, 72))
	}
	return nil
}

// DecodeSignature checks sig is an Ed25519 signature in standard base64 with padding (the
// canonical encoding of 64 bytes) and returns its bytes.
func DecodeSignature(sig string) ([]byte, error) {
	if !sigPattern.MatchString(sig) {
		return nil, invalid("sig must be %d bytes in standard base64 with padding (88 characters ending in ==), got %d characters", SignatureSize, len(sig))
	}
	b, err := base64.StdEncoding.Strict().DecodeString(sig)
	if err != nil || len(b) != SignatureSize {
		return nil, invalid("sig is not canonical base64 of %d bytes", SignatureSize)
	}
	return b, nil
}

// validateIntegrity checks the optional package integrity fields of PROTOCOL.md 1.1: each
// well-formed when present, and a signature only with its key_id and the sha256 it covers.
func validateIntegrity(sha256, sig, keyID string) error {
	if sha256 != "" {
		if err := ValidateSHA256(sha256); err != nil {
			return err
		}
	}
	if sig != "" {
		if _, err := DecodeSignature(sig); err != nil {
			return err
		}
	}
	if keyID != "" {
		if err := ValidateKeyID(keyID); err != nil {
			return err
		}
	}
	switch {
	case sig != "" && keyID == "":
		return invalid(`"sig" needs the "key_id" of the key that made it`)
	case keyID != "" && sig == "":
		return invalid(`"key_id" without "sig": no signature to verify`)
	case sig != "" && sha256 == "":
		return invalid(`"sig" needs the "sha256" it signs`)
	}
	return nil
}

// Validate checks an upgrade command's fields.
func (c UpgradeCommand) Validate() error {
	if err := validateFields(c.ID, c.Type, c.Version, true); err != nil {
		return err
	}
	switch {
	case c.URL == "" || len(c.URL) > 2048:
		return invalid(`"url" must be 1 to 2048 characters`)
	case c.Size <= 0:
		return invalid(`"size" must be more than 0`)
	}
	if err := ValidateMD5(c.MD5); err != nil {
		return err
	}
	return validateIntegrity(c.SHA256, c.Sig, c.KeyID)
}

// DescCanceled is the desc of the progress report (code CodeOther) with which a device
// confirms a cancel: it stopped before installing.
const DescCanceled = "canceled"

// CancelMessage asks a device to stop working on a command before it installs (PROTOCOL.md
// 1.1). It names the command attempt, so that a late cancel never stops a newer attempt.
type CancelMessage struct {
	ID string `json:"id"`
}

// ParseCancel validates and decodes a cancel message, as a device does.
func ParseCancel(payload []byte) (CancelMessage, error) {
	if err := checkEnvelope(payload); err != nil {
		return CancelMessage{}, err
	}
	fields, err := decodeObject(payload)
	if err != nil {
		return CancelMessage{}, err
	}
	var c CancelMessage
	if c.ID, err = stringField(fields, "id", true); err != nil {
		return CancelMessage{}, err
	}
	return c, c.Validate()
}

// Validate checks a cancel message names a command ID of 1 to MaxIDLength characters.
func (c CancelMessage) Validate() error {
	if n := utf8.RuneCountInString(c.ID); n == 0 || n > MaxIDLength {
		return invalid(`"id" must be 1 to %d characters`, MaxIDLength)
	}
	return nil
}

// Truncate shortens s to at most n bytes, for messages and bounded fields: a longer s is cut at
// a character boundary and ends with "..." (within the n bytes).
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "..."
	if n < len(mark) {
		return mark[:max(n, 0)]
	}
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
