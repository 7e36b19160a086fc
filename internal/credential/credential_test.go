package credential

import (
	"errors"
	"strings"
	"testing"
)

func TestHashVerify(t *testing.T) {
	secret, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	hash, err := Hash(secret)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		hash    string
		secret  string
		want    bool
		wantErr error
	}{
		{"right secret", hash, secret, true, nil},
		{"wrong secret", hash, secret + "x", false, nil},
		{"empty secret", hash, "", false, nil},
		{"not a hash", "plain", secret, false, ErrMalformedHash},
		{"other algorithm", "$bcrypt$v=19$m=1,t=1,p=1$AAAA$AAAA", secret, false, ErrMalformedHash},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Verify(tt.hash, tt.secret)
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Fatalf("Verify = %v, %v; want %v, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
	if secret2, _ := NewSecret(); secret2 == secret {
		t.Fatal("two secrets are equal")
	}
}

func BenchmarkVerify(b *testing.B) {
	secret, _ := NewSecret()
	hash, _ := Hash(secret)
	for b.Loop() {
		if ok, _ := Verify(hash, secret); !ok {
			b.Fatal("verify failed")
		}
	}
}

// TestRedactURL: what is shown of a database, broker or package URL never holds its password.
func TestRedactURL(t *testing.T) {
	tests := []struct{ url, want string }{
		{"postgres://postgres@127.0.0.1:5433/otaflow?sslmode=disable", "postgres://postgres@127.0.0.1:5433/otaflow?sslmode=disable"},
		{"postgres://otaflow:s3cret@db:5432/otaflow?sslmode=verify-full&sslrootcert=/ca.pem", "postgres://otaflow:xxxxx@db:5432/otaflow?sslmode=verify-full&sslrootcert=/ca.pem"},
		{"mqtts://bridge:s3cret@broker.example.com:8883", "mqtts://bridge:xxxxx@broker.example.com:8883"},
		{"https://files.example.com/fw/1.1.bin", "https://files.example.com/fw/1.1.bin"},
		{"postgres://otaflow:s3cret@db:5432/%zz", "(unparsable URL)"},
		{"tcp://s3cret@[::1", "(unparsable URL)"},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.url); got != tt.want || strings.Contains(got, "s3cret") {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.url, got, tt.want)
		}
	}
}
