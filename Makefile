# pullwatch — see README.md. `make test` and `make demo` install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := build

MODULES        := proto pkg agent aggregator e2e
TOOLS          := $(CURDIR)/.tools
VERSION        ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION       ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# Both binaries: the version in their own variable, the commit in
# pkg/buildinfo (pullwatch_build_info{version,revision,goversion}).
REVISION_LDFLAG = -X github.com/pullwatch/pullwatch/pkg/buildinfo.Revision=$(REVISION)
CI             ?=
OUT            := $(CURDIR)/_out
DEMO_DIR       ?= /tmp/pullwatch-demo
FUZZTIME       ?= 15s
TEST_FUZZTIME  ?= 3s
GOTEST_FLAGS   ?= -race -count=1
# make images: REGISTRY/pullwatch-agent:TAG and REGISTRY/pullwatch-aggregator:TAG.
# localhost/pullwatch keeps them in buildah's local storage; a REGISTRY that
# starts with host:port is pushed to (plain HTTP for localhost/127.0.0.1);
# PUSH=1 pushes to any other (e.g. REGISTRY=ghcr.io/pullwatch), PUSH=0 never.
REGISTRY       ?= localhost/pullwatch
TAG            ?= $(VERSION)
ARCHES         ?= $(shell go env GOARCH 2>/dev/null || echo amd64)
IMAGES_TLS_VERIFY ?=
PUSH           ?=
IMAGE_LICENSES ?= Apache-2.0
OCI_DIR        ?=
RELEASE_OUT    ?=
# make demo-cluster RUNTIME=containerd-2.4: the nodes' containerd (default:
# Debian's 1.6; others from scripts/build-runtimes.sh). make e2e-installed runs
# the suite on 1.6, then E2E_INSTALLED_2X_RUN on E2E_INSTALLED_2X_RUNTIME.
RUNTIME        ?=
E2E_INSTALLED_2X_RUNTIME ?= containerd-2.4
E2E_INSTALLED_2X_RUN     ?= ^(TestNodesAreRealKubelets|TestInstalledOnEveryNode|TestImageGoneBeforeRestartFails|TestEgressCutBeforePullFails|TestTokenCredentialProviderInstalled)$$

export PATH := $(TOOLS):$(PATH)

.PHONY: build kube helm helm-lint runtimes fidelity e2e e2e-installed deps tools proto proto-check lint vet unit integration test test-fresh fuzz fuzz-short bench soak demo demo-cluster demo-down demo-sequence images images-oci release release-test clean

# The agent is built with -tags grpcnotrace: gRPC then leaves out its x/net/trace
# debug pages (off unless grpc.EnableTracing is set, which the agent never does),
# whose html/template keeps every exported method of every linked type in the
# binary: 23.1 MB -> 18.8 MB, a smaller RSS on every node (docs/benchmarks.md,
# "A lighter agent"). Dockerfile.agent builds with the same tags.
build: ## bin/pullwatch-agent and bin/pullwatch-aggregator
	cd agent && CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags "-s -w -X github.com/pullwatch/pullwatch/agent/pkg/cli.Version=$(VERSION) $(REVISION_LDFLAG)" -o ../bin/pullwatch-agent ./cmd/pullwatch-agent
	cd aggregator && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION) $(REVISION_LDFLAG)" -o ../bin/pullwatch-aggregator ./cmd/pullwatch-aggregator

deps: ## Debian packages for the real parts (containerd, registry, Prometheus, protoc); needs root
	bash scripts/install-deps.sh

tools: ## Go tools (protoc-gen-go, protoc-gen-go-grpc, staticcheck) into .tools/, as pinned in scripts/deps.txt
	bash scripts/install-deps.sh go $(TOOLS)

# protoc comes from Debian's protobuf-compiler and the well-known types that
# pullwatch.proto imports (google/protobuf/duration.proto, timestamp.proto) from
# libprotobuf-dev, which puts them in /usr/include where Debian's protoc looks by
# default. Chosen over a pinned `buf` with bundled includes because both are
# Debian packages already in scripts/deps.txt, versioned with the OS like
# every other real part, and need no second code generator.
proto: tools ## regenerate the committed Go code from proto/
	cd proto && protoc -I . --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative pullwatch/v1/*.proto

proto-check: tools ## fail when the committed generated code is stale
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	cd proto && protoc -I . --go_out=$$tmp --go_opt=paths=source_relative \
		--go-grpc_out=$$tmp --go-grpc_opt=paths=source_relative pullwatch/v1/*.proto && \
	for f in $$tmp/pullwatch/v1/*.go; do \
		diff -u pullwatch/v1/$$(basename $$f) $$f > /dev/null || { echo "proto/pullwatch/v1/$$(basename $$f) is stale: run 'make proto' and commit"; exit 1; }; \
	done && echo "generated proto code is up to date"

vet:
	@for m in $(MODULES); do (cd $$m && go vet ./...) || exit 1; done

lint: tools vet helm-lint ## go vet and staticcheck on every module, gofmt, helm lint
	@unformatted=$$(gofmt -l $(MODULES)); if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	@for m in $(MODULES); do (cd $$m && staticcheck ./...) || exit 1; done
	@# The images build each binary's module alone (GOWORK=off): its go.mod
	@# must be complete without the workspace.
	@for m in $(MODULES); do (cd $$m && GOWORK=off go mod tidy -diff >/dev/null) || { echo "$$m/go.mod is not tidy: cd $$m && GOWORK=off go mod tidy"; exit 1; }; done
	@# Every make target, flag of both binaries and metric the docs name exists.
	cd e2e && go test -count=1 ./docs/
	@echo "lint ok"

unit: ## module tests (promtool rule tests need Debian's prometheus: make deps)
	@for m in proto pkg agent aggregator; do (cd $$m && PULLWATCH_REQUIRE_REAL=$(if $(CI),1,$(PULLWATCH_REQUIRE_REAL)) go test $(GOTEST_FLAGS) ./...) || exit 1; done

E2E_ENV = PULLWATCH_BIN=$(CURDIR)/bin PULLWATCH_HELM_BIN=$(HELM_BIN) PULLWATCH_TEST_OUT=$(OUT) PULLWATCH_REQUIRE_REAL=$(if $(CI),1,$(PULLWATCH_REQUIRE_REAL))

integration: build kube runtimes helm ## tests on real containerd (1.6, 1.7, 2.0, 2.4: e2e/fidelity), registry, Prometheus, kube-apiserver (root; installs them)
	bash scripts/install-deps.sh
	cd e2e && $(E2E_ENV) go test $(GOTEST_FLAGS) -timeout 20m $$(go list ./... | grep -v -e '/e2e/cluster$$' -e '/e2e/installed$$')

e2e: build ## cluster in a box: 3 nodes in network namespaces, faults, alerts end to end (root; ~2.5 min)
	bash scripts/install-deps.sh
	cd e2e && $(E2E_ENV) go test $(GOTEST_FLAGS) -v -timeout 12m ./cluster/

e2e-installed: build kube runtimes helm ## deploy/ and the images from the Dockerfiles on the real-kubelet box: all on containerd 1.6, then install/image-deleted/egress-cut/token-provider on 2.4 (root; builds the images with make images TAG=e2e)
	bash scripts/install-deps.sh
	$(MAKE) images TAG=e2e
	cd e2e && $(E2E_ENV) PULLWATCH_IMAGES=localhost/pullwatch PULLWATCH_IMAGE_TAG=e2e go test $(GOTEST_FLAGS) -v -timeout 30m ./installed/
	cd e2e && $(E2E_ENV) PULLWATCH_TEST_OUT=$(OUT)/$(E2E_INSTALLED_2X_RUNTIME) PULLWATCH_BOX_RUNTIME=$(E2E_INSTALLED_2X_RUNTIME) PULLWATCH_IMAGES=localhost/pullwatch PULLWATCH_IMAGE_TAG=e2e go test $(GOTEST_FLAGS) -v -timeout 30m -run '$(E2E_INSTALLED_2X_RUN)' ./installed/

# The pinned helm (hack/helm/go.mod): PULLWATCH_HELM_BIN as scripts/build-helm.sh
# and e2e/deploy/helm_test.go read it.
HELM_BIN ?= $(or $(PULLWATCH_HELM_BIN),$(CURDIR)/.cache/helm/bin)

helm: ## build the pinned helm (helm.sh/helm/v4, hack/helm) into .cache/helm/bin (cached; minutes when cold)
	PULLWATCH_HELM_BIN='$(HELM_BIN)' bash scripts/build-helm.sh

# The chart's defaults equal deploy/ object by object: e2e/deploy/helm_test.go
# (make integration); here, lint and a render with every option on.
helm-lint: helm ## helm lint --strict and helm template of deploy/helm/pullwatch
	$(HELM_BIN)/helm lint --strict deploy/helm/pullwatch --namespace pullwatch
	$(HELM_BIN)/helm template pullwatch deploy/helm/pullwatch --namespace pullwatch \
		--set networkPolicy.enabled=true --set grafanaDashboards.enabled=true >/dev/null
	$(HELM_BIN)/helm template pullwatch deploy/helm/pullwatch --namespace pullwatch \
		--set 'runtime.profiles={k3s,rke2}' >/dev/null
	$(HELM_BIN)/helm template pullwatch deploy/helm/pullwatch --namespace pullwatch \
		--set 'runtime.profiles={talos}' >/dev/null
	$(HELM_BIN)/helm template pullwatch deploy/helm/pullwatch --namespace pullwatch \
		--set tls.mode=generate >/dev/null
	$(HELM_BIN)/helm template pullwatch deploy/helm/pullwatch --namespace pullwatch \
		--set tls.mode=certManager >/dev/null

runtimes: ## containerd 1.7, 2.0, 2.4 and crictl from their Go modules into .cache/runtimes (cached; minutes when cold)
	bash scripts/build-runtimes.sh

fidelity: build runtimes ## the differential matrix alone: crictl pull vs pullwatch-agent check on every runtime; writes docs/node-path.md (root)
	bash scripts/install-deps.sh
	cd e2e && $(E2E_ENV) go test $(GOTEST_FLAGS) -v -timeout 20m -run TestFidelity ./fidelity/

kube: ## build etcd, kube-apiserver, kubelet, kube-controller-manager, kube-scheduler, kube-proxy, kubectl into .cache/kube/bin (cached; minutes when cold)
	bash scripts/build-kube.sh

test: deps proto-check lint unit fuzz-short integration e2e e2e-installed ## everything CI runs

fuzz-short: ## every fuzz target for TEST_FUZZTIME (default 3s), as make test runs them
	FUZZTIME=$(TEST_FUZZTIME) bash scripts/fuzz.sh

test-fresh: ## run .ci/run on a fresh clone of HEAD inside a debootstrapped Debian 12 root (root; ~30 min cold)
	bash scripts/test-fresh.sh

fuzz: ## run every fuzz target for FUZZTIME (default 15s)
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

bench: ## benchmarks reported in docs/benchmarks.md
	cd aggregator && go test -run '^$$' -bench . -benchmem ./...
	cd agent && go test -run '^$$' -bench . -benchmem ./...

soak: build ## the cluster in a box for SOAK_DURATION (1h) with faults toggled every SOAK_TOGGLE (1m); RSS, FDs, threads, goroutines per process (root; not in make test)
	bash scripts/soak.sh

demo: build ## local containerd + registry + aggregator + agent; prints the check table and metrics (root)
	bash scripts/demo.sh up

demo-cluster: build runtimes ## the box with real kubelets and deploy/ installed; RUNTIME=containerd-2.4 runs the nodes on 2.4; prints KUBECONFIG=... (root; minutes)
	RUNTIME='$(RUNTIME)' bash scripts/demo.sh cluster

demo-down: ## stop what `make demo` or `make demo-cluster` started, and remove DEMO_DIR
	bash scripts/demo.sh down

demo-sequence: build runtimes ## the demo commands in sequence, both demos side by side, a killed demo-cluster (root; ~5 min; not in make test)
	bash scripts/demo-sequence.sh

IMAGES_ENV = REGISTRY='$(REGISTRY)' TAG='$(TAG)' VERSION='$(VERSION)' ARCHES='$(ARCHES)' \
	REVISION='$(REVISION)' LICENSES='$(IMAGE_LICENSES)' \
	IMAGES_TLS_VERIFY='$(IMAGES_TLS_VERIFY)' PUSH='$(PUSH)' OCI_DIR='$(OCI_DIR)'

images: ## agent and aggregator images from the Dockerfiles with buildah, no Docker engine (root); REGISTRY=host:port pushes
	$(IMAGES_ENV) bash scripts/build-images.sh
	cd aggregator && PULLWATCH_REQUIRE_IMAGES=1 go test -count=1 -run 'TestImages' .

images-oci: ## make images, and export each image as an OCI archive into _out/images/
	$(MAKE) images OCI_DIR=$(OUT)/images

# make release REGISTRY=registry.example.com/pullwatch VERSION=v0.2.0:
# RELEASE_ARCHES (default amd64,arm64) images pushed as manifest lists, and
# install files pinned by the digests the registry serves in
# _out/release/VERSION (docs/install.md, "Release images").
RELEASE_ARCHES ?= amd64,arm64
release: ## build both images for RELEASE_ARCHES with buildah, push them to REGISTRY as VERSION, write _out/release/VERSION pinned by digest (root)
	REGISTRY='$(REGISTRY)' VERSION='$(VERSION)' ARCHES='$(RELEASE_ARCHES)' REVISION='$(REVISION)' \
		LICENSES='$(IMAGE_LICENSES)' IMAGES_TLS_VERIFY='$(IMAGES_TLS_VERIFY)' OUT='$(RELEASE_OUT)' \
		bash scripts/release.sh

# Not in make test (a multi-arch build, minutes): make release against a
# docker-registry on 127.0.0.1, then the served digests against the files.
release-test: build ## make release into a local docker-registry; check the pinned digests against what it serves (root; minutes)
	bash scripts/install-deps.sh
	cd e2e && $(E2E_ENV) PULLWATCH_RELEASE_TEST=1 go test -count=1 -v -timeout 40m -run TestRelease ./release/

clean:
	rm -rf bin $(OUT)
