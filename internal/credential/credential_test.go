package credential

import (
	"errors"
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
