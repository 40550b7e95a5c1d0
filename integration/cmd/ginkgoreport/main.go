// Command ginkgoreport lists the specs of a Ginkgo JSON report
// (-ginkgo.json-report) that did not pass, with their state and message:
// which specs critest skipped, and why.
//
//	ginkgoreport report.json
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

type report struct {
	SpecReports []struct {
		ContainerHierarchyTexts []string
		LeafNodeText            string
		LeafNodeType            string
		State                   string
		Failure                 struct{ Message string }
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ginkgoreport report.json")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var suites []report
	if err := json.Unmarshal(data, &suites); err != nil {
		fmt.Fprintln(os.Stderr, "ginkgoreport:", err)
		os.Exit(1)
	}
	for _, s := range suites {
		for _, r := range s.SpecReports {
			if r.LeafNodeType != "It" || r.State == "passed" {
				continue
			}
			name := strings.Join(append(r.ContainerHierarchyTexts, r.LeafNodeText), " ")
			msg := strings.Join(strings.Fields(r.Failure.Message), " ")
			if len(msg) > 160 {
				msg = msg[:160] + "..."
			}
			if msg == "" {
				msg = "filtered out: -ginkgo.skip, or a benchmark (critest runs them only with -benchmark)"
			}
			fmt.Printf("%s: %s (%s)\n", r.State, name, msg)
		}
	}
}
