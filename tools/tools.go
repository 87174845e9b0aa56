//go:build tools

// Package tools pins the code generators that `make proto` runs, so every
// checkout generates byte-identical code, and nfpm, which `make deb`
// packages shoal with.
package tools

import (
	_ "github.com/bufbuild/buf/cmd/buf"
	_ "github.com/goreleaser/nfpm/v2/cmd/nfpm"
	_ "google.golang.org/grpc/cmd/protoc-gen-go-grpc"
	_ "google.golang.org/protobuf/cmd/protoc-gen-go"
)
