// helm-render renders the tokenwatch Helm chart the way `helm template` does, for the tests
// on machines without a helm binary. It implements only what Helm 3 itself provides to
// templates: Go text/template with the sprig functions (minus env/expandenv, which Helm
// removes), include, tpl, required, toYaml/fromYaml/toJson/fromJson, lookup (always empty,
// as in `helm template`), and the .Values, .Release, .Chart, .Capabilities, .Files and
// .Template objects. Values are merged over the chart's values.yaml and checked against
// values.schema.json before rendering, as Helm does.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/xeipuuv/gojsonschema"
	"sigs.k8s.io/yaml"
)

// Chart is a chart directory read into memory.
type Chart struct {
	Dir       string
	Meta      map[string]interface{} // Chart.yaml with Helm's field names (.Chart.AppVersion)
	Values    map[string]interface{} // values.yaml
	Schema    []byte                 // values.schema.json, nil when absent
	Templates map[string]string      // "<chart>/templates/<file>" -> text
	Files     Files                  // every other file, for .Files.Get
}

// Options are what `helm template` takes on its command line.
type Options struct {
	ReleaseName string
	Namespace   string
	ValueFiles  []string
	Sets        []string // key.path=value, like --set
	APIVersions []string // like --api-versions
	KubeVersion string   // like --kube-version, e.g. v1.29.0
}

// Manifest is one rendered template file.
type Manifest struct {
	Source  string // "<chart>/templates/<file>"
	Content string
}

// Files is the chart's non-template files, as Helm's .Files.
type Files map[string][]byte

// Get returns a file's content, or "" when absent (Helm's behaviour).
func (f Files) Get(name string) string { return string(f[name]) }

// GetBytes returns a file's content as bytes.
func (f Files) GetBytes(name string) []byte { return f[name] }

// APIVersions is Helm's .Capabilities.APIVersions.
type APIVersions []string

// Has reports whether the group/version (or group/version/Kind) is available.
func (a APIVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

// KubeVersion is Helm's .Capabilities.KubeVersion.
type KubeVersion struct {
	Version    string
	Major      string
	Minor      string
	GitVersion string
}

func (k KubeVersion) String() string { return k.Version }

// Capabilities is Helm's .Capabilities.
type Capabilities struct {
	APIVersions APIVersions
	KubeVersion KubeVersion
	HelmVersion map[string]string
}

// Helm's default API versions for `helm template` without a cluster (the built-in ones).
var defaultAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1",
	"storage.k8s.io/v1", "scheduling.k8s.io/v1", "coordination.k8s.io/v1",
}

// LoadChart reads a chart directory.
func LoadChart(dir string) (*Chart, error) {
	c := &Chart{Dir: dir, Templates: map[string]string{}, Files: Files{}}
	raw, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	var meta map[string]interface{}
	if err := yaml.Unmarshal(raw, &meta); err != nil {
		return nil, fmt.Errorf("Chart.yaml: %v", err)
	}
	c.Meta = map[string]interface{}{}
	for k, v := range meta {
		name := strings.ToUpper(k[:1]) + k[1:]
		if k == "apiVersion" {
			name = "APIVersion"
		}
		c.Meta[name] = v
	}
	chartName, _ := c.Meta["Name"].(string)
	if chartName == "" {
		return nil, fmt.Errorf("Chart.yaml: no name")
	}
	if raw, err = os.ReadFile(filepath.Join(dir, "values.yaml")); err != nil {
		return nil, err
	}
	if err := yaml.Unmarshal(raw, &c.Values); err != nil {
		return nil, fmt.Errorf("values.yaml: %v", err)
	}
	if c.Values == nil {
		c.Values = map[string]interface{}{}
	}
	if raw, err = os.ReadFile(filepath.Join(dir, "values.schema.json")); err == nil {
		c.Schema = raw
	}
	err = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.HasPrefix(rel, "templates/") {
			c.Templates[path.Join(chartName, rel)] = string(data)
		} else {
			c.Files[rel] = data
		}
		return nil
	})
	return c, err
}

// MergeValues lays `over` on top of `base` the way Helm coalesces user values over chart
// defaults: maps merge key by key, anything else replaces, and a null deletes the key.
func MergeValues(base, over map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		if v == nil {
			delete(out, k)
			continue
		}
		if bm, ok := out[k].(map[string]interface{}); ok {
			if om, ok := v.(map[string]interface{}); ok {
				out[k] = MergeValues(bm, om)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// parseSet turns "a.b.c=value" into a nested map, typing the value like --set does.
func parseSet(s string) (map[string]interface{}, error) {
	eq := strings.Index(s, "=")
	if eq <= 0 {
		return nil, fmt.Errorf("--set %q: expected key=value", s)
	}
	keys := strings.Split(s[:eq], ".")
	text := s[eq+1:]
	var value interface{} = text
	switch {
	case text == "true" || text == "false":
		value = text == "true"
	case text == "null":
		value = nil
	default:
		if n, err := strconv.ParseInt(text, 10, 64); err == nil {
			value = n
		}
	}
	out := map[string]interface{}{keys[len(keys)-1]: value}
	for i := len(keys) - 2; i >= 0; i-- {
		out = map[string]interface{}{keys[i]: out}
	}
	return out, nil
}

// normalise round-trips through JSON so that values have the types Helm's templates see
// (numbers are float64, maps are map[string]interface{}).
func normalise(v map[string]interface{}) (map[string]interface{}, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out map[string]interface{}
	err = json.Unmarshal(raw, &out)
	return out, err
}

// ComputeValues merges the chart's values, the value files and the --set values, then
// validates the result against the chart's schema.
func ComputeValues(c *Chart, opts Options) (map[string]interface{}, error) {
	vals := c.Values
	for _, f := range opts.ValueFiles {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var over map[string]interface{}
		if err := yaml.Unmarshal(raw, &over); err != nil {
			return nil, fmt.Errorf("%s: %v", f, err)
		}
		vals = MergeValues(vals, over)
	}
	for _, s := range opts.Sets {
		over, err := parseSet(s)
		if err != nil {
			return nil, err
		}
		vals = MergeValues(vals, over)
	}
	vals, err := normalise(vals)
	if err != nil {
		return nil, err
	}
	if c.Schema != nil {
		result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(c.Schema),
			gojsonschema.NewGoLoader(vals))
		if err != nil {
			return nil, fmt.Errorf("values.schema.json: %v", err)
		}
		if !result.Valid() {
			var msgs []string
			for _, e := range result.Errors() {
				msgs = append(msgs, "- "+e.String())
			}
			return nil, fmt.Errorf("values don't meet the specifications of the schema:\n%s",
				strings.Join(msgs, "\n"))
		}
	}
	return vals, nil
}

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

// Render renders every template of the chart. It returns the manifests (partials and
// NOTES.txt excluded, empty output dropped) and the rendered NOTES.txt.
func Render(c *Chart, opts Options) ([]Manifest, string, error) {
	vals, err := ComputeValues(c, opts)
	if err != nil {
		return nil, "", err
	}
	kube := opts.KubeVersion
	if kube == "" {
		kube = "v1.29.0"
	}
	parts := strings.SplitN(strings.TrimPrefix(kube, "v"), ".", 3)
	if len(parts) < 2 {
		return nil, "", fmt.Errorf("kube version %q is not vMAJOR.MINOR.PATCH", kube)
	}
	chartName := c.Meta["Name"].(string)
	top := map[string]interface{}{
		"Values": vals,
		"Chart":  c.Meta,
		"Release": map[string]interface{}{
			"Name": opts.ReleaseName, "Namespace": opts.Namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": Capabilities{
			APIVersions: append(append(APIVersions{}, defaultAPIVersions...), opts.APIVersions...),
			KubeVersion: KubeVersion{Version: kube, Major: parts[0], Minor: parts[1], GitVersion: kube},
			HelmVersion: map[string]string{"Version": "v3"},
		},
		"Files": c.Files,
	}

	t := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includeDepth := map[string]int{}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		if includeDepth[name] > 1000 {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		includeDepth[name]++
		defer func() { includeDepth[name]-- }()
		var buf bytes.Buffer
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := t.Clone()
		if err != nil {
			return "", err
		}
		parsed, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", fmt.Errorf("tpl: %v", err)
		}
		var buf bytes.Buffer
		if err := parsed.Execute(&buf, data); err != nil {
			return "", fmt.Errorf("tpl: %v", err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, fmt.Errorf("%s", msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = toJSON
	funcs["fromJson"] = fromJSON
	funcs["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	t.Funcs(funcs)

	names := make([]string, 0, len(c.Templates))
	for name := range c.Templates {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, err := t.New(name).Parse(c.Templates[name]); err != nil {
			return nil, "", err
		}
	}

	var manifests []Manifest
	notes := ""
	for _, name := range names {
		base := path.Base(name)
		if strings.HasPrefix(base, "_") {
			continue
		}
		data := map[string]interface{}{}
		for k, v := range top {
			data[k] = v
		}
		data["Template"] = map[string]interface{}{
			"Name": name, "BasePath": path.Join(chartName, "templates"),
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, name, data); err != nil {
			return nil, "", err
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		if base == "NOTES.txt" {
			notes = out
			continue
		}
		manifests = append(manifests, Manifest{Source: name, Content: out})
	}
	return manifests, notes, nil
}

// Kubernetes kinds in the order Helm installs them (a subset of Helm's InstallOrder), so
// that `kubectl apply -f` of the stream creates dependencies first.
var installOrder = []string{
	"Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodDisruptionBudget",
	"ServiceAccount", "Secret", "ConfigMap", "StorageClass", "PersistentVolume",
	"PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
	"Role", "RoleBinding", "Service", "DaemonSet", "Pod", "ReplicaSet", "Deployment",
	"StatefulSet", "Job", "CronJob", "Ingress",
}

// Document is one YAML document of the output stream.
type Document struct {
	Source string
	Kind   string
	Text   string
}

// Documents splits the manifests into documents, drops empty ones (whitespace and comments
// only) and orders them like `helm template`: by kind in install order, then by source.
func Documents(manifests []Manifest) []Document {
	var docs []Document
	for _, m := range manifests {
		for _, text := range strings.Split("\n"+m.Content, "\n---") {
			text = strings.Trim(text, "\n")
			empty := true
			kind := ""
			for _, line := range strings.Split(text, "\n") {
				trimmed := strings.TrimSpace(line)
				if trimmed != "" && !strings.HasPrefix(trimmed, "#") {
					empty = false
				}
				if strings.HasPrefix(line, "kind:") {
					kind = strings.TrimSpace(strings.TrimPrefix(line, "kind:"))
				}
			}
			if !empty {
				docs = append(docs, Document{Source: m.Source, Kind: kind, Text: text})
			}
		}
	}
	rank := func(kind string) int {
		for i, k := range installOrder {
			if k == kind {
				return i
			}
		}
		return len(installOrder)
	}
	sort.SliceStable(docs, func(i, j int) bool {
		if rank(docs[i].Kind) != rank(docs[j].Kind) {
			return rank(docs[i].Kind) < rank(docs[j].Kind)
		}
		return docs[i].Source < docs[j].Source
	})
	return docs
}

// Stream prints documents the way `helm template` does.
func Stream(docs []Document) string {
	var b strings.Builder
	for _, d := range docs {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", d.Source, d.Text)
	}
	return b.String()
}
