package temporalconn

import "os"

// logWriter writes to the standard error of the moment (tests may swap it).
type logWriter struct{}

func (logWriter) Write(p []byte) (int, error) { return os.Stderr.Write(p) }
