package ota

import (
	"strings"
	"testing"
)

func TestUpgradeRequestRevision(t *testing.T) {
	tests := []struct {
		revision int
		wantErr  string
	}{
		{revision: UpgradeRevisionOriginal},
		{revision: UpgradeRevisionLean},
		{revision: UpgradeRevision + 1, wantErr: "upgrade the workers first"},
		{revision: -1, wantErr: "unknown to this worker"},
	}
	for _, tt := range tests {
		req := UpgradeRequest{DeviceID: "dev-1", Type: "firmware", Version: "1.1", URL: "http://files.local/fw.bin",
			MD5: "9e107d9d372bb6826bd81d3542a419d6", Size: 1024, Revision: tt.revision}.WithDefaults()
		err := req.Validate()
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("revision %d: Validate() = %v, want an error saying %q", tt.revision, err, tt.wantErr)
		}
	}
}
