package metrics

import (
	"regexp"
	"sort"
	"strings"
)

var (
	promqlStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promqlMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promqlRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	promqlGrouping = regexp.MustCompile(`(?i)\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlToken    = regexp.MustCompile(`[0-9][0-9A-Za-z_.]*|[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`)
	promqlKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true,
		"without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true, "atan2": true}
)

// MetricNames returns the metric names a PromQL expression selects, sorted and once each:
// the identifiers that are neither functions, aggregations, keywords, label names nor
// numbers. (A small scanner, not a PromQL parser: enough for dashboards and alert rules.)
func MetricNames(expr string) []string {
	s := promqlStrings.ReplaceAllString(expr, `""`)
	s = promqlMatchers.ReplaceAllString(s, " ")
	s = promqlRanges.ReplaceAllString(s, " ")
	s = promqlGrouping.ReplaceAllString(s, " ")
	seen := map[string]bool{}
	for _, m := range promqlToken.FindAllStringSubmatch(s, -1) {
		tok := m[0]
		if tok[0] >= '0' && tok[0] <= '9' || m[1] != "" || promqlKeywords[strings.ToLower(tok)] {
			continue // a number or duration, a function or aggregation, a keyword
		}
		seen[tok] = true
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
