package main

import (
	"strings"
	"testing"
)

// TestRedactURL: what devstack prints of a DATABASE_URL never holds its password.
func TestRedactURL(t *testing.T) {
	tests := []struct {
		url, want  string
		wantHidden bool
	}{
		{"postgres://postgres@127.0.0.1:5433/otaflow?sslmode=disable", "postgres://postgres@127.0.0.1:5433/otaflow?sslmode=disable", false},
		{"postgres://otaflow:s3cret@db:5432/otaflow?sslmode=verify-full&sslrootcert=/ca.pem", "postgres://otaflow:xxxxx@db:5432/otaflow?sslmode=verify-full&sslrootcert=/ca.pem", true},
		{"postgres://otaflow:s3cret@db:5432/%zz", "(unparsable URL)", true},
	}
	for _, tt := range tests {
		got, hidden := redactURL(tt.url)
		if got != tt.want || hidden != tt.wantHidden || strings.Contains(got, "s3cret") {
			t.Errorf("redactURL(%q) = %q, %v; want %q, %v", tt.url, got, hidden, tt.want, tt.wantHidden)
		}
	}
}
