package aggregator_test

// The container images: Dockerfile.agent and Dockerfile.aggregator (at the
// repository root), and the images `make images` builds from them with
// buildah (scripts/build-images.sh records what it built in
// .cache/images/built.json).
//
// TestImagesDockerfiles always runs. TestImagesBuilt compares the built
// images with the Dockerfiles (user, entrypoint, ports, labels,
// architecture), checks that each binary is static, and runs the binary of
// each image of the build host's architecture. It skips when nothing was
// built, unless PULLWATCH_REQUIRE_IMAGES=1 (`make images` sets it), and when
// buildah is missing, unless that or PULLWATCH_REQUIRE_REAL=1. Images that
// were built and no longer match the Dockerfiles fail it: run `make images`.

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// imageNames are the images, each built from Dockerfile.<name> into
// pullwatch-<name> with the binary /pullwatch-<name>.
var imageNames = []string{"agent", "aggregator"}

// ociLabels must be set on every image (the Dockerfiles' LABEL lines, filled
// from build arguments).
var ociLabels = []string{
	"org.opencontainers.image.title",
	"org.opencontainers.image.description",
	"org.opencontainers.image.source",
	"org.opencontainers.image.version",
	"org.opencontainers.image.revision",
	"org.opencontainers.image.created",
	"org.opencontainers.image.licenses",
}

// dockerInstruction is one instruction of a Dockerfile: the keyword in upper
// case and the rest of the (continuation-joined) line.
type dockerInstruction struct {
	cmd, args string
}

// dockerStage is one FROM ... stage.
type dockerStage struct {
	from         string // the FROM line's arguments
	instructions []dockerInstruction
}

// parseDockerfile splits a Dockerfile into stages. It handles what these
// Dockerfiles use: comments, backslash continuations (with comment lines
// inside them dropped, as Docker does) and one instruction per line.
func parseDockerfile(t *testing.T, text string) []dockerStage {
	t.Helper()
	var stages []dockerStage
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := dockerInstruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			stages = append(stages, dockerStage{from: in.args})
			return
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("Dockerfile: %s before the first FROM", in.cmd)
			}
			return
		}
		s := &stages[len(stages)-1]
		s.instructions = append(s.instructions, in)
	}
	for _, raw := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(raw)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	return stages
}

// all returns the arguments of every cmd instruction in the stage.
func (s dockerStage) all(cmd string) []string {
	var out []string
	for _, in := range s.instructions {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

// last returns the arguments of the stage's last cmd instruction ("" if none).
func (s dockerStage) last(cmd string) string {
	all := s.all(cmd)
	if len(all) == 0 {
		return ""
	}
	return all[len(all)-1]
}

// dockerWords splits LABEL/ARG/EXPOSE arguments into words, keeping double-
// quoted parts (with backslash escapes) together and unquoted.
func dockerWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord, quoted, escaped := false, false, false
	for _, r := range s {
		switch {
		case escaped:
			w.WriteRune(r)
			escaped = false
		case r == '\\' && quoted:
			escaped = true
		case r == '"':
			quoted = !quoted
			inWord = true
		case !quoted && (r == ' ' || r == '\t'):
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quoted {
		t.Fatalf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// dockerKeyValues parses LABEL or ARG arguments (key=value words; an ARG without
// a default maps to "").
func dockerKeyValues(t *testing.T, args []string) map[string]string {
	t.Helper()
	kv := map[string]string{}
	for _, a := range args {
		for _, w := range dockerWords(t, a) {
			k, v, _ := strings.Cut(w, "=")
			kv[k] = v
		}
	}
	return kv
}

var dockerVar = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

// expandBuildArgs substitutes ${NAME} and $NAME from vars.
func expandBuildArgs(s string, vars map[string]string) string {
	return dockerVar.ReplaceAllStringFunc(s, func(m string) string {
		return vars[dockerVar.FindStringSubmatch(m)[1]]
	})
}

type dockerfile struct {
	name   string // agent, aggregator
	stages []dockerStage
}

func (d dockerfile) final() dockerStage { return d.stages[len(d.stages)-1] }

func (d dockerfile) entrypoint(t *testing.T) []string {
	t.Helper()
	var ep []string
	if err := json.Unmarshal([]byte(d.final().last("ENTRYPOINT")), &ep); err != nil {
		t.Fatalf("Dockerfile.%s: ENTRYPOINT must be in JSON (exec) form: %v", d.name, err)
	}
	return ep
}

func (d dockerfile) exposed(t *testing.T) []string {
	t.Helper()
	var ports []string
	for _, a := range d.final().all("EXPOSE") {
		for _, p := range dockerWords(t, a) {
			if !strings.Contains(p, "/") {
				p += "/tcp"
			}
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return ports
}

func readDockerfiles(t *testing.T) []dockerfile {
	t.Helper()
	var out []dockerfile
	for _, name := range imageNames {
		b, err := os.ReadFile(filepath.Join("..", "Dockerfile."+name))
		if err != nil {
			t.Fatal(err)
		}
		d := dockerfile{name: name, stages: parseDockerfile(t, string(b))}
		if len(d.stages) < 2 {
			t.Fatalf("Dockerfile.%s: want a build stage and a runtime stage, got %d stages", name, len(d.stages))
		}
		out = append(out, d)
	}
	return out
}

// TestImagesDockerfiles checks what the Dockerfiles promise without building
// them: a static cross-compile in a builder that runs on the build platform,
// the binary as the JSON-form entrypoint, a numeric user (non-root for the
// aggregator), every OCI label, and that scripts/build-images.sh passes
// every build argument the Dockerfiles declare.
func TestImagesDockerfiles(t *testing.T) {
	script, err := os.ReadFile(filepath.Join("..", "scripts", "build-images.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range readDockerfiles(t) {
		t.Run(d.name, func(t *testing.T) {
			build := d.stages[0]
			if !strings.HasPrefix(build.from, "--platform=$BUILDPLATFORM ") {
				t.Errorf("Dockerfile.%s: the builder must run natively and cross-compile: FROM --platform=$BUILDPLATFORM ..., got FROM %s", d.name, build.from)
			}
			env := dockerKeyValues(t, build.all("ENV"))
			if env["CGO_ENABLED"] != "0" {
				t.Errorf("Dockerfile.%s: the build stage must set CGO_ENABLED=0 (a static binary for distroless/static), got ENV %v", d.name, env)
			}
			runs := strings.Join(build.all("RUN"), "\n")
			for _, want := range []string{"GOOS=$TARGETOS", "GOARCH=$TARGETARCH", "-o /out/pullwatch-" + d.name} {
				if !strings.Contains(runs, want) {
					t.Errorf("Dockerfile.%s: the go build must use %q", d.name, want)
				}
			}

			final := d.final()
			if ep := d.entrypoint(t); !slices.Equal(ep, []string{"/pullwatch-" + d.name}) {
				t.Errorf("Dockerfile.%s: ENTRYPOINT %q, want [\"/pullwatch-%s\"]", d.name, ep, d.name)
			}
			user := final.last("USER")
			if !regexp.MustCompile(`^[0-9]+:[0-9]+$`).MatchString(user) {
				t.Errorf("Dockerfile.%s: USER %q must be numeric uid:gid (so that runAsNonRoot can check it)", d.name, user)
			}
			if d.name == "aggregator" && strings.HasPrefix(user, "0:") {
				t.Errorf("Dockerfile.aggregator: USER %q: the aggregator runs as non-root", user)
			}
			labels := dockerKeyValues(t, final.all("LABEL"))
			for _, k := range ociLabels {
				if labels[k] == "" {
					t.Errorf("Dockerfile.%s: no LABEL %s", d.name, k)
				}
			}
			if want := "pullwatch-" + d.name; labels["org.opencontainers.image.title"] != want {
				t.Errorf("Dockerfile.%s: title label %q, want %q", d.name, labels["org.opencontainers.image.title"], want)
			}

			var args []string
			for _, s := range d.stages {
				for k := range dockerKeyValues(t, s.all("ARG")) {
					args = append(args, k)
				}
			}
			for _, a := range args {
				if !strings.Contains(string(script), "--build-arg "+a+"=") {
					t.Errorf("Dockerfile.%s declares ARG %s, which scripts/build-images.sh does not pass (--build-arg %s=...)", d.name, a, a)
				}
			}
		})
	}
}

// builtRecord is .cache/images/built.json, written by scripts/build-images.sh.
type builtRecord struct {
	StorageDriver string   `json:"storage_driver"`
	Version       string   `json:"version"`
	Revision      string   `json:"revision"`
	Created       string   `json:"created"`
	Source        string   `json:"source"`
	Licenses      string   `json:"licenses"`
	Refs          []string `json:"refs"`
	Images        []struct {
		Image string `json:"image"`
		Arch  string `json:"arch"`
		Ref   string `json:"ref"`
	} `json:"images"`
}

// buildahImage is the part of `buildah inspect --type image` read here.
type buildahImage struct {
	OCIv1 struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		Config       struct {
			User         string              `json:"User"`
			Entrypoint   []string            `json:"Entrypoint"`
			ExposedPorts map[string]struct{} `json:"ExposedPorts"`
			Labels       map[string]string   `json:"Labels"`
		} `json:"config"`
	} `json:"OCIv1"`
}

func imagesRequireReal() bool { return os.Getenv("PULLWATCH_REQUIRE_REAL") == "1" }

func buildah(t *testing.T, storage string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("buildah", append([]string{"--storage-driver", storage}, args...)...)
	cmd.Env = append(os.Environ(), "BUILDAH_ISOLATION=chroot")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("buildah %s: %v\n%s%s(rebuild with `make images`)", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

var elfMachine = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// TestImagesBuilt compares the images `make images` built with the
// Dockerfiles they were built from.
func TestImagesBuilt(t *testing.T) {
	// Without a build there is nothing to compare: skip, also in CI (make
	// test does not build images), unless make images runs this.
	requireImages := os.Getenv("PULLWATCH_REQUIRE_IMAGES") == "1"
	b, err := os.ReadFile(filepath.Join("..", ".cache", "images", "built.json"))
	if err != nil {
		if requireImages {
			t.Fatal("no images built: ", err)
		}
		t.Skip("no images built (run `make images`): ", err)
	}
	skip := t.Skip
	if requireImages || imagesRequireReal() {
		skip = t.Fatal
	}
	if _, err := exec.LookPath("buildah"); err != nil {
		skip("buildah is not installed (make images installs it): ", err)
	}
	if os.Geteuid() != 0 {
		skip("buildah's vfs storage of make images is root's")
	}
	var rec builtRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf(".cache/images/built.json: %v", err)
	}
	if len(rec.Images) == 0 {
		t.Fatal(".cache/images/built.json lists no images")
	}
	if !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(rec.Revision) {
		t.Errorf("revision %q is not a commit", rec.Revision)
	}
	if _, err := time.Parse(time.RFC3339, rec.Created); err != nil {
		t.Errorf("created %q: %v", rec.Created, err)
	}
	// The build arguments that scripts/build-images.sh passed.
	buildArgs := map[string]string{
		"VERSION": rec.Version, "REVISION": rec.Revision, "CREATED": rec.Created,
		"SOURCE_URL": rec.Source, "LICENSES": rec.Licenses,
	}

	dockerfiles := map[string]dockerfile{}
	for _, d := range readDockerfiles(t) {
		dockerfiles[d.name] = d
	}
	arches := map[string][]string{}
	for _, img := range rec.Images {
		arches[img.Image] = append(arches[img.Image], img.Arch)
		d, ok := dockerfiles[img.Image]
		if !ok {
			t.Fatalf("built.json names image %q, which has no Dockerfile", img.Image)
		}
		t.Run(img.Image+"/"+img.Arch, func(t *testing.T) {
			var inspected buildahImage
			if err := json.Unmarshal(buildah(t, rec.StorageDriver, "inspect", "--type", "image", img.Ref), &inspected); err != nil {
				t.Fatalf("buildah inspect %s: %v", img.Ref, err)
			}
			got := inspected.OCIv1
			if got.OS != "linux" || got.Architecture != img.Arch {
				t.Errorf("%s: platform %s/%s, want linux/%s", img.Ref, got.OS, got.Architecture, img.Arch)
			}
			final := d.final()
			if want := final.last("USER"); got.Config.User != want {
				t.Errorf("%s: user %q, Dockerfile.%s says USER %q", img.Ref, got.Config.User, d.name, want)
			}
			if want := d.entrypoint(t); !slices.Equal(got.Config.Entrypoint, want) {
				t.Errorf("%s: entrypoint %q, Dockerfile.%s says %q", img.Ref, got.Config.Entrypoint, d.name, want)
			}
			var ports []string
			for p := range got.Config.ExposedPorts {
				ports = append(ports, p)
			}
			slices.Sort(ports)
			if want := d.exposed(t); !slices.Equal(ports, want) {
				t.Errorf("%s: exposed ports %q, Dockerfile.%s says EXPOSE %q", img.Ref, ports, d.name, want)
			}
			for k, v := range dockerKeyValues(t, final.all("LABEL")) {
				if want := expandBuildArgs(v, buildArgs); got.Config.Labels[k] != want {
					t.Errorf("%s: label %s=%q, want %q (Dockerfile.%s with the build arguments)", img.Ref, k, got.Config.Labels[k], want, d.name)
				}
			}
			for _, k := range ociLabels {
				if got.Config.Labels[k] == "" {
					t.Errorf("%s: label %s is empty", img.Ref, k)
				}
			}

			// The binary: static, for the image's arch, and it runs.
			ctr := strings.TrimSpace(string(buildah(t, rec.StorageDriver, "from", "--pull=never", "--quiet", img.Ref)))
			t.Cleanup(func() { buildah(t, rec.StorageDriver, "rm", ctr) })
			mnt := strings.TrimSpace(string(buildah(t, rec.StorageDriver, "mount", ctr)))
			bin := "/pullwatch-" + d.name
			f, err := elf.Open(filepath.Join(mnt, bin))
			if err != nil {
				t.Fatalf("%s: %v", img.Ref, err)
			}
			defer f.Close()
			if f.Machine != elfMachine[img.Arch] {
				t.Errorf("%s: %s is for %v, want %v", img.Ref, bin, f.Machine, elfMachine[img.Arch])
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
					t.Errorf("%s: %s is dynamically linked (has %v); the distroless/static base has no libc", img.Ref, bin, p.Type)
				}
			}
			if img.Arch != runtime.GOARCH {
				t.Logf("%s: not run (a %s binary on a %s host)", img.Ref, img.Arch, runtime.GOARCH)
				return
			}
			// As the image's user, in the image's root.
			switch d.name {
			case "agent":
				out := string(buildah(t, rec.StorageDriver, "run", ctr, "--", bin, "version"))
				if out == "" {
					// Seen once on a loaded machine: buildah run (chroot)
					// exited 0 with no output. Once more, so that a lost
					// pipe is told apart from a binary that prints nothing.
					t.Logf("%s: `%s version` printed nothing; running it again", img.Ref, bin)
					out = string(buildah(t, rec.StorageDriver, "run", ctr, "--", bin, "version"))
				}
				if want := "pullwatch-agent " + rec.Version + "\n"; out != want {
					t.Errorf("%s: `%s version` printed %q, want %q", img.Ref, bin, out, want)
				}
			case "aggregator":
				out := string(buildah(t, rec.StorageDriver, "run", ctr, "--", bin, "--help"))
				if !strings.Contains(out, "-grpc-listen") {
					t.Errorf("%s: `%s --help` printed no --grpc-listen:\n%s", img.Ref, bin, out)
				}
				out = string(buildah(t, rec.StorageDriver, "run", ctr, "--", bin, "version"))
				if out == "" {
					// As for the agent: once more on a lost pipe.
					t.Logf("%s: `%s version` printed nothing; running it again", img.Ref, bin)
					out = string(buildah(t, rec.StorageDriver, "run", ctr, "--", bin, "version"))
				}
				if want := "pullwatch-aggregator " + rec.Version + "\n"; out != want {
					t.Errorf("%s: `%s version` printed %q, want %q", img.Ref, bin, out, want)
				}
			}
		})
	}

	// Several arches: REGISTRY/NAME:TAG is a manifest list of them.
	for _, ref := range rec.Refs {
		name := strings.TrimPrefix(strings.SplitN(ref[strings.LastIndex(ref, "/")+1:], ":", 2)[0], "pullwatch-")
		if len(arches[name]) < 2 {
			continue
		}
		var list struct {
			Manifests []struct {
				Platform struct {
					Architecture string `json:"architecture"`
					OS           string `json:"os"`
				} `json:"platform"`
			} `json:"manifests"`
		}
		if err := json.Unmarshal(buildah(t, rec.StorageDriver, "manifest", "inspect", ref), &list); err != nil {
			t.Fatalf("buildah manifest inspect %s: %v", ref, err)
		}
		var got []string
		for _, m := range list.Manifests {
			got = append(got, m.Platform.OS+"/"+m.Platform.Architecture)
		}
		var want []string
		for _, a := range arches[name] {
			want = append(want, "linux/"+a)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("manifest list %s: platforms %q, want %q", ref, got, want)
		}
	}
}
