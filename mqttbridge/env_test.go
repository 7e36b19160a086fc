package main

import (
	"os"
	"testing"

	"github.com/otaflow/otaflow/internal/dev/testenv"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Temporal: true, Postgres: true}))
}

func databaseURL(t *testing.T) string { return testenv.DatabaseURL(t) }
