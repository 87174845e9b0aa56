# shoal's build. `make demo` and `make test` set up a fresh Debian host
# themselves (as root): see deploy/setup-host.sh.

GO      ?= go
BIN     := bin
TOOLS   := -modfile=tools/go.mod
GOTEST  ?= $(GO) test
# E2E tests run real shoald processes against the host's containerd.
TESTFLAGS ?= -count=1 -timeout 45m
# Where `make install` puts shoald and shoalctl (DESTDIR stages it).
PREFIX  ?= /usr/local
DESTDIR ?=
UNIT    := deploy/systemd/shoald.service
# The package version: the latest v* tag (1.2.0, or 1.2.0+3+gabc123 past
# it), else 0.0.0+git<commit>. Debian versions must start with a digit.
VERSION ?= $(shell git describe --tags --match 'v[0-9]*' 2>/dev/null | sed 's/^v//; s/-/+/g' | grep . || echo "0.0.0+git$$(git rev-parse --short HEAD 2>/dev/null || echo unknown)")
DEB_ARCH ?= amd64
# Where `make deb` writes the package (and stages its files).
DEB_OUT ?= $(BIN)

# The VM tier (e2e/vm) boots Debian VMs with Vagrant and libvirt; they take
# every core, so it runs alone, after everything else.
VMPKG       := ./e2e/vm
VMTESTFLAGS ?= -count=1 -timeout 40m -p 1

.PHONY: all build setup proto proto-check vet test unit e2e test-vm bench soak demo demo-down vm-demo vm-demo-down clean install uninstall deb

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

setup:
	sh deploy/setup-host.sh

# Code generators, pinned in tools/go.mod.
$(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o ../$(BIN)/buf github.com/bufbuild/buf/cmd/buf
	cd tools && $(GO) build -o ../$(BIN)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	cd tools && $(GO) build -o ../$(BIN)/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc

$(BIN)/nfpm: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o ../$(BIN)/nfpm github.com/goreleaser/nfpm/v2/cmd/nfpm

proto: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc
	$(BIN)/buf lint
	rm -f api/shoal/v1/*.pb.go
	$(BIN)/buf generate

# Fails when the committed generated code is not what `make proto` makes.
proto-check: proto
	@if [ -n "$$(git status --porcelain -- api proto)" ]; then \
		echo "generated code in api/ is stale: run 'make proto' and commit the result" >&2; \
		git status --porcelain -- api proto >&2; git diff --stat -- api >&2; exit 1; \
	fi

# shoald and shoalctl into $(PREFIX)/bin and the systemd unit (naming
# them there) into /etc/systemd/system; see docs/install.md.
install: build
	@test -f $(UNIT) || { echo "$(UNIT) is missing" >&2; exit 1; }
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/systemd/system
	install -m 0755 $(BIN)/shoald $(BIN)/shoalctl $(DESTDIR)$(PREFIX)/bin/
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' $(UNIT) > $(DESTDIR)/etc/systemd/system/shoald.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/shoald.service
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed: set SHOALD_FIRST in /etc/default/shoald (see $(UNIT)), then systemctl enable --now shoald"

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable --now shoald.service 2>/dev/null || true; fi
	rm -f $(DESTDIR)$(PREFIX)/bin/shoald $(DESTDIR)$(PREFIX)/bin/shoalctl $(DESTDIR)/etc/systemd/system/shoald.service
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# $(DEB_OUT)/shoal_$(VERSION)_$(DEB_ARCH).deb: static binaries in /usr/bin,
# the unit in /usr/lib/systemd/system, built by nfpm from
# deploy/deb/nfpm.yaml.
deb: $(BIN)/nfpm
	@test -f $(UNIT) || { echo "$(UNIT) is missing" >&2; exit 1; }
	rm -rf $(DEB_OUT)/deb && mkdir -p $(DEB_OUT)/deb
	CGO_ENABLED=0 GOOS=linux GOARCH=$(DEB_ARCH) $(GO) build -trimpath -ldflags '-s -w' -o $(DEB_OUT)/deb/ ./cmd/shoald ./cmd/shoalctl
	sed 's|/usr/local/bin/|/usr/bin/|g' $(UNIT) > $(DEB_OUT)/deb/shoald.service
	VERSION='$(VERSION)' ARCH=$(DEB_ARCH) PKGDIR=$(DEB_OUT)/deb $(BIN)/nfpm package --config deploy/deb/nfpm.yaml --packager deb --target $(DEB_OUT)/shoal_$(VERSION)_$(DEB_ARCH).deb

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

unit:
	$(GOTEST) $(TESTFLAGS) $$($(GO) list ./... | grep -v -e /e2e -e /bench)

e2e: build
	$(GOTEST) $(TESTFLAGS) -v $$($(GO) list ./e2e/... | grep -v /e2e/vm)

test: setup proto-check vet build
	$(GOTEST) $(TESTFLAGS) $$($(GO) list ./... | grep -v /e2e/vm)
	$(MAKE) test-vm

# The tests remove their VMs themselves; vmenv.sh down catches a run that
# was killed before it could (unless SHOAL_VM_KEEP asked to keep them).
test-vm:
	$(GOTEST) $(VMTESTFLAGS) -v $(VMPKG); rc=$$?; \
	[ -n "$$SHOAL_VM_KEEP" ] || sh deploy/vagrant/vmenv.sh down; exit $$rc

# Benchmarks: end to end against containerd and a lab cluster (./bench,
# including the routing mesh against direct traffic), the scheduler with its
# raft commits (./manager), the nftables load balancer (1,000 services x 10
# backends, one change), the dispatcher's network views, the scheduler alone.
bench: setup build
	$(GOTEST) -run '^$$' -bench . -benchtime 1x -timeout 60m ./bench/... ./manager/ | tee $(BIN)/bench.txt
	$(GOTEST) -run '^$$' -bench . -timeout 20m ./network/lb/nft/ ./manager/dispatcher/ | tee -a $(BIN)/bench.txt
	$(GOTEST) -run '^$$' -bench . -timeout 20m ./scheduler/ | tee -a $(BIN)/bench.txt
	$(MAKE) bench-vm

# The linearizability test's long run (e2e/linearizability_test.go):
# random kills, SIGSTOPs and partitions of a 3-manager lab's managers for
# SOAK (default 10m), then the history is checked against the model of
# the service table. `make test` runs the bounded version.
SOAK ?= 10m
soak: setup build
	SHOAL_SOAK=$(SOAK) $(GOTEST) -count=1 -timeout 2h -v -run '^TestLinearizableSoak$$' ./e2e/

# The VM tier's benchmarks on a cluster of their own (skipped where the
# tier cannot run): the mesh with IPVS and with nftables against the task
# straight, and both backends' programming benchmarks in a VM, as ratios.
.PHONY: bench-vm
bench-vm:
	@mkdir -p $(BIN)
	$(GOTEST) -run '^$$' -bench . -benchtime 1x $(VMTESTFLAGS) $(VMPKG) | tee $(BIN)/bench-vm.txt; \
	[ -n "$$SHOAL_VM_KEEP" ] || sh deploy/vagrant/vmenv.sh down

demo: setup build
	sh deploy/demo.sh

demo-down:
	sh deploy/demo.sh down

vm-demo: build
	sh deploy/vm-demo.sh

vm-demo-down:
	sh deploy/vm-demo.sh down

clean:
	rm -rf $(BIN)
