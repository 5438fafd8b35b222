package main

import (
	"io"
	"os"
	"strings"
	"testing"
)

// The quick start in README.md is this program, and it runs.
func TestQuickstartIsTheReadmeAndRuns(t *testing.T) {
	program, _ := os.ReadFile("main.go")
	readme, _ := os.ReadFile("../../README.md")
	if !strings.Contains(string(readme), "```go\n"+string(program)+"```") {
		t.Fatal("README.md's quick start differs from examples/quickstart/main.go")
	}
	if os.Getenv("BILLOW_URL") == "" {
		t.Fatal("set BILLOW_URL to a running `billow serve`")
	}
	r, w, _ := os.Pipe()
	stdout := os.Stdout
	os.Stdout = w
	main()
	os.Stdout = stdout
	w.Close()
	out, _ := io.ReadAll(r)
	if string(out) != "gpt 0.3\n" { // fixed ids: a second run against the same server prints the same
		t.Fatalf("printed %q", out)
	}
}
