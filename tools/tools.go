//go:build tools

// Package tools pins the code generators that `make proto` runs, so every
// checkout generates byte-identical code.
package tools

import (
	_ "github.com/bufbuild/buf/cmd/buf"
	_ "google.golang.org/grpc/cmd/protoc-gen-go-grpc"
	_ "google.golang.org/protobuf/cmd/protoc-gen-go"
)
