package credentials

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestParseDockerConfigJSON(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []entry
		ignored []string
		wantErr string
	}{
		{name: "auth field", in: `{"auths":{"r.example":{"auth":"` + b64("alice:pa:ss") + `"}}}`,
			want: []entry{{"r.example", userPass{"alice", "pa:ss"}}}},
		{name: "auth unpadded", in: `{"auths":{"r.example":{"auth":"` + strings.TrimRight(b64("bob:x"), "=") + `"}}}`,
			want: []entry{{"r.example", userPass{"bob", "x"}}}},
		{name: "username password", in: `{"auths":{"r.example":{"username":"u","password":"p","email":"e@x"}}}`,
			want: []entry{{"r.example", userPass{"u", "p"}}}},
		{name: "auth wins over username", in: `{"auths":{"r.example":{"username":"u","password":"p","auth":"` + b64("a:b") + `"}}}`,
			want: []entry{{"r.example", userPass{"a", "b"}}}},
		{name: "case-insensitive keys as in Go and the kubelet", in: `{"Auths":{"r.example":{"Username":"u","Password":"p"}}}`,
			want: []entry{{"r.example", userPass{"u", "p"}}}},
		{name: "sorted keys", in: `{"auths":{"b.example":{"auth":"` + b64("b:2") + `"},"a.example":{"auth":"` + b64("a:1") + `"}}}`,
			want: []entry{{"a.example", userPass{"a", "1"}}, {"b.example", userPass{"b", "2"}}}},
		{name: "helpers ignored", in: `{"auths":{},"credsStore":"desktop","credHelpers":{"gcr.io":"gcloud"}}`,
			ignored: []string{"credHelpers", "credsStore"}},
		{name: "identity token only", in: `{"auths":{"r.example":{"identitytoken":"tok"}}}`,
			ignored: []string{`auths["r.example"] identitytoken/registrytoken`}},
		{name: "no auths is valid and empty", in: `{}`},
		{name: "null", in: `null`},
		{name: "syntax", in: `{"auths":{"r.example":{"auth":"x"`, wantErr: "syntax error at byte"},
		{name: "wrong type", in: `{"auths":[]}`, wantErr: "not a docker config"},
		{name: "auth not base64", in: `{"auths":{"r.example":{"auth":"!!!"}}}`, wantErr: `auths["r.example"].auth: not base64`},
		{name: "auth without colon", in: `{"auths":{"r.example":{"auth":"` + b64("nocolon") + `"}}}`, wantErr: "username:password"},
		{name: "too large", in: `{"auths":{}}` + strings.Repeat(" ", maxConfigBytes), wantErr: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDockerConfigJSON([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.entries, tt.want) {
				t.Errorf("entries = %v, want %v", got.entries, tt.want)
			}
			if !slices.Equal(got.ignored, tt.ignored) {
				t.Errorf("ignored = %q, want %q", got.ignored, tt.ignored)
			}
		})
	}
}

func TestParseDockercfg(t *testing.T) {
	got, err := parseDockercfg([]byte(`{"https://index.docker.io/v1/":{"auth":"` + b64("u:p") + `","email":"x"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := []entry{{"https://index.docker.io/v1/", userPass{"u", "p"}}}; !slices.Equal(got.entries, want) {
		t.Errorf("entries = %v, want %v", got.entries, want)
	}
	if _, err := parseDockercfg([]byte(`{"auths":"x"}`)); err == nil {
		t.Error("a config.json-shaped file with a string for a registry parsed as .dockercfg")
	}
}

func TestParseErrorsDoNotQuoteInput(t *testing.T) {
	const secret = "s3cr3t-V4LUE"
	for _, in := range []string{
		`{"auths":{"r":{"password":"` + secret + `"` + "\x00" + `}}}`,
		`{"auths":{"r":{"password":` + secret + `}}}`,
		`{"auths":{"r":{"password":["` + secret + `"]}}}`,
		`{"auths":{"r":{"auth":"` + secret + `"}}}`,
		`{"auths":{"r":{"auth":"` + b64(secret) + `"}}}`,
	} {
		_, err1 := parseDockerConfigJSON([]byte(in))
		_, err2 := parseDockercfg([]byte(in))
		for _, err := range []error{err1, err2} {
			if err != nil && (strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "s3cr")) {
				t.Errorf("error quotes the input: %v", err)
			}
		}
	}
}

func FuzzParseDockerConfigJSON(f *testing.F) {
	f.Add([]byte(`{"auths":{"r.example":{"auth":"` + b64("u:p") + `"}}}`))
	f.Add([]byte(`{"auths":{"r":{"username":"u","password":"p","identitytoken":"t"}},"credHelpers":{}}`))
	f.Add([]byte(`{"auths":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parseDockerConfigJSON(data)
		if err != nil {
			return
		}
		for _, e := range cfg.entries {
			if e.username == "" && e.password == "" {
				t.Fatalf("empty credential kept for %q", e.key)
			}
		}
		kr := &keyring{}
		kr.add(cfg.entries)
		_ = kr.lookup("docker.io/library/nginx")
	})
}

func FuzzParseDockercfg(f *testing.F) {
	f.Add([]byte(`{"https://index.docker.io/v1/":{"auth":"` + b64("u:p") + `"}}`))
	f.Add([]byte(`{"r":{"auth":"dTpw"}}`))
	f.Add([]byte(`{"r":{"auth":"=="}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parseDockercfg(data)
		if err != nil {
			return
		}
		for _, e := range cfg.entries {
			if e.username == "" && e.password == "" {
				t.Fatalf("empty credential kept for %q", e.key)
			}
		}
	})
}
