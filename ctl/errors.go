package ctl

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/status"
)

// ErrorMessage is what shoalctl prints after "Error: " for err. A gRPC
// error shows the server's message only: the managers write messages for
// users ("service web not found"), and "rpc error: code = NotFound desc ="
// in front of them helps nobody. Context added around it is kept.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var lines []string
		for _, e := range joined.Unwrap() {
			lines = append(lines, ErrorMessage(e))
		}
		return strings.Join(lines, "\n")
	}
	var se interface {
		error
		GRPCStatus() *status.Status
	}
	full := err.Error()
	if errors.As(err, &se) {
		raw := se.Error()
		if prefix, ok := strings.CutSuffix(full, raw); ok {
			return prefix + se.GRPCStatus().Message()
		}
	}
	return full
}

// Commands return the managers' errors without adding context of their
// own: the user knows what they typed, and the managers' messages are
// written for users and name the object concerned. Where one command
// works on several arguments, argError names the argument when the
// message does not already.
func argError(arg string, err error) error {
	if strings.Contains(ErrorMessage(err), arg) {
		return err
	}
	return fmt.Errorf("%s: %w", arg, err)
}
