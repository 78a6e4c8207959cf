package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var opts Options
	var values, sets, apis listFlag
	chartDir := flag.String("chart", "helm/tokenwatch", "chart directory")
	flag.StringVar(&opts.ReleaseName, "name", "tokenwatch", "release name")
	flag.StringVar(&opts.Namespace, "namespace", "tokenwatch", "release namespace")
	flag.StringVar(&opts.KubeVersion, "kube-version", "", "Kubernetes version (.Capabilities)")
	flag.Var(&values, "values", "values file (repeatable)")
	flag.Var(&sets, "set", "key.path=value (repeatable)")
	flag.Var(&apis, "api-versions", "extra API version for .Capabilities (repeatable)")
	notes := flag.Bool("notes", false, "print NOTES.txt instead of the manifests")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: helm-render [flags]\nRenders a Helm chart like `helm template`.")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "helm-render: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	opts.ValueFiles, opts.Sets, opts.APIVersions = values, sets, apis

	chart, err := LoadChart(*chartDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "helm-render: %v\n", err)
		os.Exit(1)
	}
	manifests, notesText, err := Render(chart, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "helm-render: %v\n", err)
		os.Exit(1)
	}
	if *notes {
		fmt.Print(notesText)
		return
	}
	fmt.Print(Stream(Documents(manifests)))
}
