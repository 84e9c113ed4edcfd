# cmk-operator. `make help` lists the targets.

# Versions of the tools the Makefile builds into bin/.
CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
ENVTEST_K8S_VERSION ?= 1.37.2
ENVTEST_ETCD_VERSION ?= 3.6.16

IMG ?= cmk-operator:dev
LOCALBIN ?= $(shell pwd)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
ENVTEST_ASSETS ?= $(LOCALBIN)/k8s

GO ?= go
GOFMT ?= $(shell $(GO) env GOROOT)/bin/gofmt
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate the CRD and RBAC manifests.
	$(CONTROLLER_GEN) rbac:roleName=cmk-operator-manager crd paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: controller-gen ## Generate the DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: fmt
fmt: ## Run go fmt.
	$(GO) fmt ./...

# The repository's Go files, committed or new, less those git ignores and those deleted.
GO_FILES_CMD = git ls-files --cached --others --exclude-standard -- '*.go' | while read -r f; do [ ! -f "$$f" ] || echo "$$f"; done

.PHONY: fmt-check
fmt-check: ## Fail, listing them, when gofmt would change Go files (cheap: make test runs it).
	@unformatted=$$($(GO_FILES_CMD) | xargs -r $(GOFMT) -l); \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt would change these files: run 'gofmt -w' on them (or 'make lint-fix') and commit."; \
		echo "$$unformatted" | sed 's/^/  /'; \
		exit 1; \
	fi

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: test
test: fmt-check manifests generate vet envtest-assets ## Run every test against a real kube-apiserver and etcd.
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" $(GO) test ./... -count=1 -timeout 20m
	cd test/prometheus && $(GO) vet ./... && $(GO) test ./... -count=1
	cd test/gitops && $(GO) vet ./... && KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" $(GO) test ./... -count=1 -timeout 10m

# Sizes of `make bench`: keys changed at once, rounds of each step, keys before the restart.
BENCH_KEYS ?= 1000
BENCH_ROUNDS ?= 3
BENCH_RESTART_KEYS ?= 10000

.PHONY: bench
bench: envtest-assets ## Benchmark bulk work against the apiserver's floor, a restart over 10,000 keys, the key-in-use index over 10,000 volumes, and Huawei KMS calls per transition.
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" $(GO) test ./test/bench/ -run '^$$' -bench . -benchtime 1x -count 1 -timeout 90m \
		-args -keys $(BENCH_KEYS) -rounds $(BENCH_ROUNDS) -restart-keys $(BENCH_RESTART_KEYS)
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" $(GO) test ./internal/kms/huaweicloud/ -run '^$$' -bench ProviderCalls -benchtime 200x -count 1

.PHONY: envtest-assets
envtest-assets: $(ENVTEST_ASSETS)/kube-apiserver ## Build kube-apiserver and etcd from the Go module proxy into bin/k8s.

$(ENVTEST_ASSETS)/kube-apiserver: hack/build-envtest-assets.sh hack/k8s-build.sh
	KUBE_VERSION=$(ENVTEST_K8S_VERSION) ETCD_VERSION=$(ENVTEST_ETCD_VERSION) hack/build-envtest-assets.sh $(ENVTEST_ASSETS)

NODE_ASSETS ?= $(LOCALBIN)/node

.PHONY: node-assets
node-assets: $(NODE_ASSETS)/kube-proxy ## Build kubelet, kube-proxy, kube-controller-manager and kube-scheduler from the Go module proxy into bin/node.

$(NODE_ASSETS)/kube-proxy: hack/build-node-assets.sh hack/k8s-build.sh
	KUBE_VERSION=$(ENVTEST_K8S_VERSION) hack/build-node-assets.sh $(NODE_ASSETS)

##@ Build and run

.PHONY: build
build: ## Build the manager binary.
	$(GO) build -o bin/manager .

.PHONY: run
run: manifests generate ## Run the manager against the cluster in KUBECONFIG.
	$(GO) run . --kms-namespace=cmk-system

.PHONY: plugin
plugin: ## Build the kubectl plugin: put bin/ on the PATH and run `kubectl cmk`.
	$(GO) build -ldflags "-X github.com/cmk-operator/cmk-operator/internal/plugin.Version=$$(git describe --always --dirty 2>/dev/null || echo dev)" -o bin/kubectl-cmk ./cmd/kubectl-cmk

.PHONY: controlplane
controlplane: ## Build the local control plane launcher used by dev and demo.
	$(GO) build -o bin/controlplane ./hack/controlplane

.PHONY: dev
dev: build controlplane envtest-assets ## Start a local control plane and the manager in the foreground.
	hack/dev.sh

.PHONY: demo
demo: build controlplane envtest-assets ## Walk through the seed: schedule and cancel deletions, one key and many.
	hack/demo.sh

IMAGE_TAR ?= bin/cmk-operator-image.tar

.PHONY: image
image: ## Build the manager image without a container engine (bin/cmk-operator-image.tar, tagged IMG) for ctr/docker/podman load or kind load image-archive.
	GO=$(GO) hack/build-image.sh $(IMAGE_TAR) $(IMG)

.PHONY: e2e
e2e: envtest-assets node-assets image plugin ## As root: a real single-node cluster, the operator deployed into it as docs/operations.md says, the e2e suite, then teardown.
	IMAGE_TAR=$(abspath $(IMAGE_TAR)) hack/e2e/run.sh

.PHONY: docker-build
docker-build: ## Build the manager image (needs a Docker engine).
	docker build -t $(IMG) .

.PHONY: deploy
deploy: manifests ## Deploy the operator to the cluster in KUBECONFIG.
	kubectl apply -k config/default

# undeploy removes the operator and nothing it manages: the namespace holds the embedded KMS's
# keys and its root key, and deleting the CRD would delete every CustomerMasterKey. Removing
# those is a separate, deliberate step (docs/operations.md, "Removing the operator").
.PHONY: undeploy
undeploy: ## Remove the operator (Deployment, RBAC); keep the CRD, the keys and the KMS namespace.
	kubectl delete -k config/manager --ignore-not-found
	kubectl delete -k config/rbac --ignore-not-found
	@echo "Removed the operator. Kept: the CustomerMasterKey CRD and resources, and namespace cmk-system with the"
	@echo "embedded KMS's keys and root key. Removing those destroys the keys: see docs/operations.md, \"Removing the operator\"."

##@ Checks

# Go modules of their own under test/ (their own go.mod), linted one by one besides the root's.
TEST_MODULES = $(shell find test -name go.mod -not -path '*/testdata/*' -exec dirname {} \; | sort)

.PHONY: lint
lint: golangci-lint ## Run golangci-lint (.golangci.yml) over the root module and every module under test/.
	@failed=; \
	for dir in . $(TEST_MODULES); do \
		echo "golangci-lint run in $$dir"; \
		(cd $$dir && $(GOLANGCI_LINT) run --config $(CURDIR)/.golangci.yml ./...) || failed="$$failed $$dir"; \
	done; \
	if [ -n "$$failed" ]; then echo "golangci-lint found problems (above) in:$$failed"; exit 1; fi

.PHONY: lint-fix
lint-fix: golangci-lint ## Run golangci-lint with --fix: formats (gofmt, goimports) and applies the fixes it can.
	@failed=; \
	for dir in . $(TEST_MODULES); do \
		echo "golangci-lint run --fix in $$dir"; \
		(cd $$dir && $(GOLANGCI_LINT) run --config $(CURDIR)/.golangci.yml --fix ./...) || failed="$$failed $$dir"; \
	done; \
	if [ -n "$$failed" ]; then echo "golangci-lint left problems (above) it cannot fix in:$$failed"; exit 1; fi

.PHONY: verify-fmt
verify-fmt: golangci-lint ## Fail, listing them, when gofmt or goimports (.golangci.yml's formatters) would change Go files.
	@diff=$$($(GO_FILES_CMD) | xargs -r $(GOLANGCI_LINT) fmt --config $(CURDIR)/.golangci.yml --diff) || { \
		echo "$$diff"; \
		echo "Formatting (gofmt, goimports) would change these files: run 'make lint-fix' and commit."; \
		echo "$$diff" | sed -n 's/^diff .* //p' | sed 's/^/  /'; \
		exit 1; \
	}

.PHONY: verify
verify: ## Fail when generated files are stale, Go files are not formatted, or golangci-lint finds a problem.
	@failed=; \
	$(MAKE) --no-print-directory verify-generated || failed="$$failed generated-files(verify-generated)"; \
	$(MAKE) --no-print-directory verify-fmt || failed="$$failed formatting(verify-fmt)"; \
	$(MAKE) --no-print-directory lint || failed="$$failed lint"; \
	if [ -n "$$failed" ]; then echo "make verify failed:$$failed"; exit 1; fi; \
	echo "make verify: generated files, formatting and lint are clean."

.PHONY: verify-generated
verify-generated: manifests generate ## Fail when generated files differ from what is committed.
	@git diff --exit-code -- config api || { echo "Generated files are stale: run 'make manifests generate' and commit."; exit 1; }
	@test -z "$$(git status --porcelain -- config api)" || { git status --porcelain -- config api; echo "Generated files are not committed."; exit 1; }

##@ Tools

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Install controller-gen into bin/.
$(CONTROLLER_GEN):
	mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(LOCALBIN)/controller-gen $(CONTROLLER_GEN)
	ln -sf $(notdir $(CONTROLLER_GEN)) $(LOCALBIN)/controller-gen

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT) ## Install golangci-lint into bin/.
$(GOLANGCI_LINT):
	mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(LOCALBIN)/golangci-lint $(GOLANGCI_LINT)
	ln -sf $(notdir $(GOLANGCI_LINT)) $(LOCALBIN)/golangci-lint
