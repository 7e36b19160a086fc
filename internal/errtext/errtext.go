// Package errtext words errors for the people who read OTAflow's messages. An error that
// crossed an activity, a child workflow or a workflow reads, in the Temporal SDK's form,
// "activity error (type: CheckPackage, scheduledEventID: 7, startedEventID: 8, identity:
// 1234@host@): package ... does not match (type: PackageMismatch, retryable: false): package
// mismatch": the wrapping names SDK internals, and the cause repeats what the message says.
// Plain keeps what went wrong ("package ... does not match"); PlainText does the same for such
// a text already recorded (a rollout's reason, an upgrade's desc, written by earlier versions).
//
// Both are pure functions of their input, so workflow code may use them.
package errtext

import (
	"errors"
	"regexp"
	"strings"

	"go.temporal.io/sdk/temporal"
)

// Plain is err's message without the Temporal SDK's wrapping: the message of the application
// error (or timeout, cancel, termination) inside an activity, child workflow or workflow
// error, in place of that error's text within err's. "" for nil.
func Plain(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	// Go's wrapping (fmt.Errorf with %w) holds the wrapped error's text verbatim: the first
	// Temporal error in the chain is replaced there by its plain words.
	for e := err; e != nil; e = errors.Unwrap(e) {
		if words, ok := temporalWords(e); ok {
			s = strings.Replace(s, e.Error(), words, 1)
			break
		}
	}
	return PlainText(s)
}

// temporalWords says what a Temporal SDK error means, without its wrapping; ok is false for
// an error of another kind. It looks at err itself, not at what err wraps.
func temporalWords(err error) (words string, ok bool) {
	switch e := err.(type) {
	case *temporal.ActivityError, *temporal.ChildWorkflowExecutionError, *temporal.WorkflowExecutionError:
		inner := errors.Unwrap(e)
		if inner == nil {
			return "failed", true
		}
		if words, ok := temporalWords(inner); ok {
			return words, true
		}
		return inner.Error(), true
	case *temporal.ApplicationError:
		if m := e.Message(); m != "" {
			return m, true
		}
		if c := e.Unwrap(); c != nil {
			return Plain(c), true
		}
		return e.Type(), true
	case *temporal.TimeoutError:
		words = e.Message()
		if c := e.Unwrap(); c != nil {
			words += ": " + Plain(c)
		}
		return words, true
	case *temporal.CanceledError:
		return "canceled", true
	case *temporal.TerminatedError:
		return "terminated", true
	case *temporal.ServerError:
		return e.Message(), true
	case *temporal.PanicError:
		return "panic: " + e.Error(), true
	}
	return "", false
}

var (
	// wrappers are the SDK's wrapping texts, each with the ": " before what it wraps.
	wrappers = regexp.MustCompile(
		`activity error \(type: [^,()]*, scheduledEventID: \d+, startedEventID: \d+, identity: [^()]*\)(: )?` +
			`|child workflow execution error \(type: [^,()]*, workflowID: [^,()]*, runID: [^,()]*, initiatedEventID: \d+, startedEventID: \d+\)(: )?` +
			`|workflow execution error \(type: [^,()]*, workflowID: [^,()]*, runID: [^,()]*\)(: )?`)
	// appSuffix ends an application error's message; what follows it is the error's cause,
	// which OTAflow's messages already say in words.
	appSuffix = regexp.MustCompile(` \(type: [^,()]*, retryable: (true|false)\)`)
	// timeoutSuffix ends a timeout error's message.
	timeoutSuffix = regexp.MustCompile(` \(type: (StartToClose|ScheduleToStart|ScheduleToClose|Heartbeat|Unspecified)\)`)
)

// PlainText is s without the Temporal SDK's wrapping texts: a reason or desc recorded from
// an error's text. Text that holds none is returned unchanged.
func PlainText(s string) string {
	if !strings.Contains(s, "(type: ") {
		return s
	}
	return cutSuffixes(wrappers.ReplaceAllString(s, ""))
}

// cutSuffixes drops an application error's type and retryability and the cause after them,
// and a timeout's type.
func cutSuffixes(s string) string {
	if loc := appSuffix.FindStringIndex(s); loc != nil {
		s = s[:loc[0]]
	}
	return timeoutSuffix.ReplaceAllString(s, "")
}
