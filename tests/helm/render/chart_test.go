package main

// Render tests of helm/tokenwatch: what a platform team relies on when it installs the chart
// on production nodes. Run by ctest (tests/helm/CMakeLists.txt), which sets
// TOKENWATCH_SOURCE_DIR and, for the agent's own config parser, AGENT_CONFIG_CHECK.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func sourceDir() string {
	if dir := os.Getenv("TOKENWATCH_SOURCE_DIR"); dir != "" {
		return dir
	}
	return "../../.."
}

func chartDir() string { return filepath.Join(sourceDir(), "helm", "tokenwatch") }

func allFeaturesFile() string {
	return filepath.Join(sourceDir(), "tests", "helm", "all-features.yaml")
}

type obj = map[string]interface{}

// rendered is one parsed document of a rendering.
type rendered struct {
	Source string
	Object obj
}

func renderChart(t *testing.T, opts Options) []rendered {
	t.Helper()
	if opts.ReleaseName == "" {
		opts.ReleaseName = "tokenwatch"
	}
	if opts.Namespace == "" {
		opts.Namespace = "tokenwatch"
	}
	chart, err := LoadChart(chartDir())
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	manifests, _, err := Render(chart, opts)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	var out []rendered
	for _, doc := range Documents(manifests) {
		var o obj
		if err := yaml.UnmarshalStrict([]byte(doc.Text), &o); err != nil {
			t.Fatalf("%s: not valid YAML (duplicate keys count): %v\n%s", doc.Source, err, doc.Text)
		}
		out = append(out, rendered{Source: doc.Source, Object: o})
	}
	return out
}

func allFeatures() Options {
	return Options{ValueFiles: []string{allFeaturesFile()}}
}

// get walks maps by key and lists by "[i]"; nil when absent.
func get(v interface{}, path ...string) interface{} {
	for _, key := range path {
		switch cur := v.(type) {
		case obj:
			v = cur[key]
		case []interface{}:
			var i int
			if _, err := fmt.Sscanf(key, "[%d]", &i); err != nil || i >= len(cur) {
				return nil
			}
			v = cur[i]
		default:
			return nil
		}
	}
	return v
}

func str(v interface{}, path ...string) string {
	s, _ := get(v, path...).(string)
	return s
}

func list(v interface{}, path ...string) []interface{} {
	l, _ := get(v, path...).([]interface{})
	return l
}

func find(t *testing.T, docs []rendered, kind, name string) obj {
	t.Helper()
	for _, d := range docs {
		if str(d.Object, "kind") == kind && str(d.Object, "metadata", "name") == name {
			return d.Object
		}
	}
	t.Fatalf("no %s %q rendered", kind, name)
	return nil
}

func kinds(docs []rendered) []string {
	var out []string
	for _, d := range docs {
		out = append(out, str(d.Object, "kind")+"/"+str(d.Object, "metadata", "name"))
	}
	sort.Strings(out)
	return out
}

func onlyContainer(t *testing.T, workload obj) obj {
	t.Helper()
	containers := list(workload, "spec", "template", "spec", "containers")
	if len(containers) != 1 {
		t.Fatalf("%s: want one container, got %d", str(workload, "metadata", "name"), len(containers))
	}
	return containers[0].(obj)
}

func stringsOf(l []interface{}) []string {
	var out []string
	for _, v := range l {
		out = append(out, fmt.Sprint(v))
	}
	return out
}

func checkWellFormed(t *testing.T, docs []rendered) {
	t.Helper()
	if len(docs) == 0 {
		t.Fatal("the chart rendered nothing")
	}
	seen := map[string]bool{}
	for _, d := range docs {
		for _, field := range [][]string{{"apiVersion"}, {"kind"}, {"metadata", "name"}} {
			if str(d.Object, field...) == "" {
				t.Errorf("%s: a document has no %s", d.Source, strings.Join(field, "."))
			}
		}
		if ns := str(d.Object, "metadata", "namespace"); ns != "tokenwatch" {
			t.Errorf("%s: namespace %q, want the release namespace", d.Source, ns)
		}
		id := str(d.Object, "kind") + "/" + str(d.Object, "metadata", "name")
		if seen[id] {
			t.Errorf("%s rendered twice", id)
		}
		seen[id] = true
		switch str(d.Object, "kind") {
		case "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding":
			t.Errorf("%s: tokenwatch needs no RBAC, yet the chart grants some", id)
		}
	}
}

func TestDefaultsRenderWellFormedDocuments(t *testing.T) {
	docs := renderChart(t, Options{})
	checkWellFormed(t, docs)
	want := []string{
		"ConfigMap/tokenwatch-agent", "DaemonSet/tokenwatch-agent", "Deployment/tokenwatch-collector",
		"PersistentVolumeClaim/tokenwatch-collector", "Service/tokenwatch-collector",
		"ServiceAccount/tokenwatch-agent", "ServiceAccount/tokenwatch-collector",
	}
	if got := kinds(docs); !reflect.DeepEqual(got, want) {
		t.Errorf("default resources:\n got %v\nwant %v", got, want)
	}
}

func TestAllFeaturesRenderWellFormedDocuments(t *testing.T) {
	docs := renderChart(t, allFeatures())
	checkWellFormed(t, docs)
	for _, id := range [][2]string{
		{"Certificate", "tokenwatch-collector"}, {"Certificate", "tokenwatch-agent"},
		{"PodMonitor", "tokenwatch-agent"}, {"PodMonitor", "tokenwatch-collector"},
		{"PrometheusRule", "tokenwatch"},
		{"NetworkPolicy", "tokenwatch-agent"}, {"NetworkPolicy", "tokenwatch-collector"},
	} {
		find(t, docs, id[0], id[1])
	}
	chart, err := LoadChart(chartDir())
	if err != nil {
		t.Fatal(err)
	}
	opts := allFeatures()
	opts.ReleaseName, opts.Namespace = "tokenwatch", "tokenwatch"
	if _, notes, err := Render(chart, opts); err != nil || !strings.Contains(notes, "tokenwatchctl") {
		t.Errorf("NOTES.txt: err %v, text %q", err, notes)
	}
}

var agentCapabilities = []string{"BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_PTRACE", "SYS_RESOURCE"}

func agentCaps(t *testing.T, container obj) []string {
	t.Helper()
	caps := stringsOf(list(container, "securityContext", "capabilities", "add"))
	sort.Strings(caps)
	return caps
}

func TestAgentRunsWithExactlyTheDesignCapabilities(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sets     []string
		wantCaps []string
	}{
		{"defaults", nil, agentCapabilities},
		{"tracepoint", []string{"agent.hookMode=tracepoint"}, agentCapabilities},
		{"fanotify", []string{"agent.hookMode=fanotify"},
			[]string{"BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := find(t, renderChart(t, Options{Sets: tc.sets}), "DaemonSet", "tokenwatch-agent")
			c := onlyContainer(t, ds)
			sc := get(c, "securityContext")
			if p := get(sc, "privileged"); p != false {
				t.Errorf("privileged = %v, want false", p)
			}
			if got := agentCaps(t, c); !reflect.DeepEqual(got, tc.wantCaps) {
				t.Errorf("capabilities add %v, want %v", got, tc.wantCaps)
			}
			if drop := stringsOf(list(sc, "capabilities", "drop")); !reflect.DeepEqual(drop, []string{"ALL"}) {
				t.Errorf("capabilities drop %v, want [ALL]", drop)
			}
			if get(sc, "readOnlyRootFilesystem") != true {
				t.Error("root filesystem is writable")
			}
			// The API server refuses allowPrivilegeEscalation=false with CAP_SYS_ADMIN.
			wantEscalation := interface{}(false)
			if tc.name == "fanotify" {
				wantEscalation = nil
			}
			if got := get(sc, "allowPrivilegeEscalation"); got != wantEscalation {
				t.Errorf("allowPrivilegeEscalation = %v, want %v", got, wantEscalation)
			}
		})
	}
	t.Run("privileged opt-in", func(t *testing.T) {
		ds := find(t, renderChart(t, Options{Sets: []string{"agent.privileged=true"}}),
			"DaemonSet", "tokenwatch-agent")
		if get(onlyContainer(t, ds), "securityContext", "privileged") != true {
			t.Error("agent.privileged=true did not make the agent privileged")
		}
	})
}

func TestAgentPodCoversEveryNodeWithoutAPIAccess(t *testing.T) {
	ds := find(t, renderChart(t, Options{}), "DaemonSet", "tokenwatch-agent")
	spec := get(ds, "spec", "template", "spec")
	if get(spec, "hostPID") != true {
		t.Error("hostPID is not set: lineage would see container pids")
	}
	if get(spec, "hostNetwork") != nil {
		t.Error("the agent asks for hostNetwork, which it does not need")
	}
	if get(spec, "automountServiceAccountToken") != false {
		t.Error("a ServiceAccount token is mounted into the agent")
	}
	if str(spec, "priorityClassName") != "system-node-critical" {
		t.Errorf("priorityClassName %q", str(spec, "priorityClassName"))
	}
	tolerateAll := false
	for _, tol := range list(spec, "tolerations") {
		if str(tol, "operator") == "Exists" && str(tol, "key") == "" && str(tol, "effect") == "" {
			tolerateAll = true
		}
	}
	if !tolerateAll {
		t.Error("the agent does not tolerate every taint, so some nodes go unwatched")
	}
	sa := find(t, renderChart(t, Options{}), "ServiceAccount", str(spec, "serviceAccountName"))
	if get(sa, "automountServiceAccountToken") != false {
		t.Error("the agent's ServiceAccount mounts its token")
	}
	c := onlyContainer(t, ds)
	nodeName := false
	for _, env := range list(c, "env") {
		if str(env, "name") == "NODE_NAME" && str(env, "valueFrom", "fieldRef", "fieldPath") == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Error("NODE_NAME does not come from the downward API")
	}
	for _, kind := range []string{"requests", "limits"} {
		if get(c, "resources", kind, "memory") == nil || get(c, "resources", kind, "cpu") == nil {
			t.Errorf("agent resources have no %s", kind)
		}
	}
}

// mount is a volumeMount joined with its volume.
type mount struct {
	MountPath, HostPath, Propagation string
	ReadOnly                         bool
	Volume                           obj
}

func mounts(t *testing.T, workload obj) map[string]mount {
	t.Helper()
	volumes := map[string]obj{}
	for _, v := range list(workload, "spec", "template", "spec", "volumes") {
		volumes[str(v, "name")] = v.(obj)
	}
	out := map[string]mount{}
	for _, m := range list(onlyContainer(t, workload), "volumeMounts") {
		v, ok := volumes[str(m, "name")]
		if !ok {
			t.Fatalf("volumeMount %q has no volume", str(m, "name"))
		}
		out[str(m, "mountPath")] = mount{
			MountPath: str(m, "mountPath"), HostPath: str(v, "hostPath", "path"),
			Propagation: str(m, "mountPropagation"), ReadOnly: get(m, "readOnly") == true, Volume: v,
		}
	}
	return out
}

func TestAgentMountsTheHostReadOnly(t *testing.T) {
	ds := find(t, renderChart(t, Options{}), "DaemonSet", "tokenwatch-agent")
	m := mounts(t, ds)
	for _, path := range []string{"/sys/kernel/btf", "/sys/fs/cgroup", "/sys/kernel/tracing",
		"/var/lib/kubelet", "/etc/kubernetes"} {
		got, ok := m[path]
		if !ok {
			t.Errorf("%s is not mounted", path)
			continue
		}
		if got.HostPath != path || !got.ReadOnly {
			t.Errorf("%s: host path %q read-only %v, want the same host path read-only",
				path, got.HostPath, got.ReadOnly)
		}
	}
	if p := m["/var/lib/kubelet"].Propagation; p != "HostToContainer" {
		t.Errorf("kubelet root propagation %q: new pods' token volumes would not appear", p)
	}
	state := m["/var/lib/tokenwatch"]
	if state.HostPath != "/var/lib/tokenwatch" || state.ReadOnly {
		t.Errorf("state dir: host path %q read-only %v, want a writable hostPath", state.HostPath, state.ReadOnly)
	}
	if str(m["/etc/tokenwatch"].Volume, "configMap", "name") != "tokenwatch-agent" {
		t.Error("the config file does not come from the agent's ConfigMap")
	}
	for path, got := range m {
		if got.HostPath != "" && !got.ReadOnly && path != "/var/lib/tokenwatch" {
			t.Errorf("host path %s is mounted writable", path)
		}
	}

	// A kubelet kubeconfig under the kubelet root is already mounted; none outside it.
	ds = find(t, renderChart(t, Options{Sets: []string{"agent.kubeletKubeconfig=/var/lib/kubelet/kubeconfig"}}),
		"DaemonSet", "tokenwatch-agent")
	if _, ok := mounts(t, ds)["/var/lib/kubelet"]; !ok {
		t.Error("kubelet root not mounted")
	}
	if len(mounts(t, ds)) != len(m)-1 {
		t.Errorf("a kubeconfig under the kubelet root got a mount of its own: %v", mounts(t, ds))
	}
}

func containerPort(t *testing.T, c obj, name string) float64 {
	t.Helper()
	for _, p := range list(c, "ports") {
		if str(p, "name") == name {
			return get(p, "containerPort").(float64)
		}
	}
	t.Fatalf("no container port named %q", name)
	return 0
}

func TestAgentProbesAndScrapeUseTheMetricsEndpoint(t *testing.T) {
	for _, port := range []int{9750, 19750} {
		ds := find(t, renderChart(t, Options{Sets: []string{fmt.Sprintf("agent.metricsPort=%d", port)}}),
			"DaemonSet", "tokenwatch-agent")
		c := onlyContainer(t, ds)
		for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
			if got := str(c, probe, "httpGet", "path"); got != path {
				t.Errorf("%s path %q, want %q", probe, got, path)
			}
			if got := containerPort(t, c, str(c, probe, "httpGet", "port")); int(got) != port {
				t.Errorf("%s port %v, want %d", probe, got, port)
			}
		}
		ann := get(ds, "spec", "template", "metadata", "annotations")
		if str(ann, "prometheus.io/scrape") != "true" || str(ann, "prometheus.io/port") != fmt.Sprint(port) ||
			str(ann, "prometheus.io/path") != "/metrics" {
			t.Errorf("scrape annotations %v", ann)
		}
		cm := find(t, renderChart(t, Options{Sets: []string{fmt.Sprintf("agent.metricsPort=%d", port)}}),
			"ConfigMap", "tokenwatch-agent")
		if !strings.Contains(str(cm, "data", "config.yaml"), fmt.Sprintf("metrics_address: 0.0.0.0:%d\n", port)) {
			t.Errorf("the agent does not listen on the probed port:\n%s", str(cm, "data", "config.yaml"))
		}
	}
}

// agentFlagKeys reads the agent's settings from its source, so that a renamed flag fails here.
func agentFlagKeys(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(sourceDir(), "agent", "main", "config.cc"))
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	for _, m := range regexp.MustCompile(`\{"([a-z-]+)", (true|false), (true|false),`).FindAllStringSubmatch(string(src), -1) {
		keys[strings.ReplaceAll(m[1], "-", "_")] = true
	}
	if !keys["kubelet_root"] || !keys["host_allowed_executables"] {
		t.Fatalf("could not read the agent's settings from config.cc (got %v)", keys)
	}
	return keys
}

// checkAgentAccepts runs the agent's own parser on the rendered args and config file.
func checkAgentAccepts(t *testing.T, docs []rendered) map[string]string {
	t.Helper()
	checker := os.Getenv("AGENT_CONFIG_CHECK")
	if checker == "" {
		t.Fatal("AGENT_CONFIG_CHECK is not set (run through ctest)")
	}
	cm := find(t, docs, "ConfigMap", "tokenwatch-agent")
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte(str(cm, "data", "config.yaml")), 0o600); err != nil {
		t.Fatal(err)
	}
	args := stringsOf(list(onlyContainer(t, find(t, docs, "DaemonSet", "tokenwatch-agent")), "args"))
	for i, a := range args {
		args[i] = strings.Replace(a, "--config=/etc/tokenwatch/config.yaml", "--config="+file, 1)
	}
	out, err := exec.Command(checker, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("the agent rejects the chart's args %v: %s", args, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		kv := strings.SplitN(line, "=", 2)
		got[kv[0]] = kv[1]
	}
	return got
}

func TestAgentConfigIsAcceptedByTheAgent(t *testing.T) {
	keys := agentFlagKeys(t)
	for _, opts := range []Options{
		{},
		{ValueFiles: []string{allFeaturesFile()}},
		{Sets: []string{"collector.enabled=false", "agent.kubeletRoot=/var/lib/k0s/kubelet"}},
	} {
		docs := renderChart(t, opts)
		cm := find(t, docs, "ConfigMap", "tokenwatch-agent")
		var config obj
		if err := yaml.UnmarshalStrict([]byte(str(cm, "data", "config.yaml")), &config); err != nil {
			t.Fatalf("config.yaml: %v", err)
		}
		for key := range config {
			if !keys[key] {
				t.Errorf("config.yaml key %q is not an agent setting", key)
			}
		}
		parsed := checkAgentAccepts(t, docs)
		m := mounts(t, find(t, docs, "DaemonSet", "tokenwatch-agent"))
		if mt, ok := m[parsed["kubelet_root"]]; !ok || mt.HostPath != parsed["kubelet_root"] {
			t.Errorf("the agent reads kubelet root %q, which is not the mounted host path", parsed["kubelet_root"])
		}
		if mt := m[parsed["state_dir"]]; mt.HostPath == "" || mt.ReadOnly {
			t.Errorf("the agent's state dir %q is not the writable hostPath", parsed["state_dir"])
		}
		if _, collectorOn := config["collector"]; collectorOn {
			if parsed["collector"] != "tokenwatch-collector.tokenwatch.svc:9760" {
				t.Errorf("collector %q is not the chart's Service", parsed["collector"])
			}
		} else if find(t, docs, "DaemonSet", "tokenwatch-agent") != nil && contains(kinds(docs), "Service/tokenwatch-collector") {
			t.Error("a collector is deployed but the agents are not pointed at it")
		}
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func TestAgentConfigChangeRollsTheDaemonSet(t *testing.T) {
	checksum := func(sets ...string) string {
		ds := find(t, renderChart(t, Options{Sets: sets}), "DaemonSet", "tokenwatch-agent")
		return str(ds, "spec", "template", "metadata", "annotations", "checksum/config")
	}
	base := checksum()
	if base == "" || base != checksum() {
		t.Fatalf("checksum/config missing or unstable: %q", base)
	}
	if checksum("agent.config.log_level=debug") == base {
		t.Error("changing agent.config does not change the pod template, so agents keep the old config")
	}
	if checksum("collector.persistence.size=9Gi") != base {
		t.Error("an unrelated value rolls every agent")
	}
}

func TestCollectorRunsAsNonRootWithItsRealFlags(t *testing.T) {
	docs := renderChart(t, Options{})
	dep := find(t, docs, "Deployment", "tokenwatch-collector")
	spec := get(dep, "spec", "template", "spec")
	if get(spec, "automountServiceAccountToken") != false {
		t.Error("the collector mounts a ServiceAccount token")
	}
	if get(spec, "securityContext", "runAsNonRoot") != true || get(spec, "securityContext", "runAsUser") != float64(65532) {
		t.Errorf("collector pod securityContext %v", get(spec, "securityContext"))
	}
	c := onlyContainer(t, dep)
	args := stringsOf(list(c, "args"))
	want := []string{"--listen=0.0.0.0:9760", "--db=/var/lib/tokenwatch/collector.db",
		"--metrics-address=0.0.0.0:9761"}
	if !reflect.DeepEqual(args, want) {
		t.Errorf("collector args %v, want %v", args, want)
	}
	for _, opts := range []Options{{}, allFeatures(), {Sets: []string{"collector.metrics.enabled=false",
		"tls.enabled=true", "tls.clientAuth=true", "tls.collectorSecret=c", "tls.agentSecret=a"}}} {
		checkCollectorFlagsExist(t, renderChart(t, opts))
	}
	if m := mounts(t, dep)["/var/lib/tokenwatch"]; str(m.Volume, "persistentVolumeClaim", "claimName") != "tokenwatch-collector" {
		t.Errorf("the database does not live on the chart's PVC: %v", m.Volume)
	}
	svc := find(t, docs, "Service", "tokenwatch-collector")
	if str(svc, "spec", "ports", "[0]", "targetPort") != "grpc" || containerPort(t, c, "grpc") != 9760 {
		t.Error("the Service does not reach the collector's gRPC port")
	}
	for k, v := range get(svc, "spec", "selector").(obj) {
		if str(dep, "spec", "template", "metadata", "labels", k) != v {
			t.Errorf("Service selector %s=%v does not match the collector pod", k, v)
		}
	}
}

func TestTLSWiresTheSameSecretsOnBothSides(t *testing.T) {
	docs := renderChart(t, allFeatures())
	collectorCert := find(t, docs, "Certificate", "tokenwatch-collector")
	agentCert := find(t, docs, "Certificate", "tokenwatch-agent")
	if !contains(stringsOf(list(collectorCert, "spec", "dnsNames")), "tokenwatch-collector.tokenwatch.svc") {
		t.Error("the collector's certificate does not name the address agents dial")
	}
	if str(collectorCert, "spec", "issuerRef", "name") != "tokenwatch-ca" ||
		str(collectorCert, "spec", "issuerRef", "kind") != "ClusterIssuer" {
		t.Errorf("issuerRef %v", get(collectorCert, "spec", "issuerRef"))
	}
	checkTLS(t, docs, str(collectorCert, "spec", "secretName"), str(agentCert, "spec", "secretName"), false)

	// Secrets of the user's own, with client certificates required.
	docs = renderChart(t, Options{Sets: []string{"tls.enabled=true", "tls.clientAuth=true",
		"tls.collectorSecret=collector-cert", "tls.agentSecret=agent-cert"}})
	checkTLS(t, docs, "collector-cert", "agent-cert", true)

	chart, err := LoadChart(chartDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sets []string
		want string
	}{
		{[]string{"tls.enabled=true"}, `tls\.(agent|collector)Secret is required`},
		{[]string{"tls.enabled=true", "tls.clientAuth=true", "tls.certManager.enabled=true",
			"tls.certManager.issuerRef.name=ca"}, `tls\.clientAuth needs a client certificate naming every node`},
		{[]string{"tls.enabled=true", "tls.certManager.enabled=true"}, `issuerRef\.name is required`},
	} {
		_, _, err = Render(chart, Options{ReleaseName: "tokenwatch", Namespace: "tokenwatch", Sets: tc.sets})
		if err == nil || !regexp.MustCompile(tc.want).MatchString(err.Error()) {
			t.Errorf("%v: err %v, want %s", tc.sets, err, tc.want)
		}
	}
}

// checkTLS: the collector serves the certificate of collectorSecret (and asks for client
// certificates when clientAuth), agents mount agentSecret and their config names its files.
func checkTLS(t *testing.T, docs []rendered, collectorSecret, agentSecret string, clientAuth bool) {
	t.Helper()
	for _, w := range []struct{ kind, name, secret string }{
		{"Deployment", "tokenwatch-collector", collectorSecret},
		{"DaemonSet", "tokenwatch-agent", agentSecret},
	} {
		m, ok := mounts(t, find(t, docs, w.kind, w.name))["/etc/tokenwatch-tls"]
		if !ok || !m.ReadOnly || str(m.Volume, "secret", "secretName") != w.secret {
			t.Errorf("%s does not mount Secret %s read-only: %v", w.name, w.secret, m)
		}
	}
	args := stringsOf(list(onlyContainer(t, find(t, docs, "Deployment", "tokenwatch-collector")), "args"))
	want := []string{"--listen=0.0.0.0:9760", "--db=/var/lib/tokenwatch/collector.db",
		"--metrics-address=0.0.0.0:9761",
		"--tls-cert=/etc/tokenwatch-tls/tls.crt", "--tls-key=/etc/tokenwatch-tls/tls.key"}
	if clientAuth {
		want = append(want, "--tls-client-ca=/etc/tokenwatch-tls/ca.crt")
	}
	if !reflect.DeepEqual(args, want) {
		t.Errorf("collector args %v, want %v", args, want)
	}
	parsed := checkAgentAccepts(t, docs)
	wantAgent := map[string]string{"collector_tls_ca": "/etc/tokenwatch-tls/ca.crt"}
	if clientAuth {
		wantAgent["collector_tls_cert"] = "/etc/tokenwatch-tls/tls.crt"
		wantAgent["collector_tls_key"] = "/etc/tokenwatch-tls/tls.key"
	}
	for _, k := range []string{"collector_tls_ca", "collector_tls_cert", "collector_tls_key"} {
		if parsed[k] != wantAgent[k] {
			t.Errorf("agent %s = %q, want %q", k, parsed[k], wantAgent[k])
		}
	}
}

func selects(selector, labels interface{}) bool {
	sel, _ := selector.(obj)
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if str(labels, k) != v {
			return false
		}
	}
	return true
}

func TestNetworkPolicyAllowsOnlyAgentsToCollectorAndPrometheusToMetrics(t *testing.T) {
	docs := renderChart(t, allFeatures())
	agentLabels := get(find(t, docs, "DaemonSet", "tokenwatch-agent"), "spec", "template", "metadata", "labels")
	collectorLabels := get(find(t, docs, "Deployment", "tokenwatch-collector"), "spec", "template", "metadata", "labels")

	collectorNP := find(t, docs, "NetworkPolicy", "tokenwatch-collector")
	if !selects(get(collectorNP, "spec", "podSelector", "matchLabels"), collectorLabels) {
		t.Fatal("the collector policy does not select the collector")
	}
	ingress := list(collectorNP, "spec", "ingress")
	if len(ingress) != 2 || len(list(ingress[0], "ports")) != 1 || get(ingress[0], "ports", "[0]", "port") != float64(9760) {
		t.Fatalf("collector ingress %v, want the gRPC port, then the metrics port", ingress)
	}
	from := list(ingress[0], "from")
	if len(from) != 2 || !selects(get(from[0], "podSelector", "matchLabels"), agentLabels) ||
		get(from[0], "namespaceSelector") != nil {
		t.Errorf("collector ingress peers %v, want the agents (same namespace) and collectorClients", from)
	}
	if len(list(ingress[1], "ports")) != 1 || get(ingress[1], "ports", "[0]", "port") != float64(9761) ||
		len(list(ingress[1], "from")) != 1 ||
		str(ingress[1], "from", "[0]", "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name") != "monitoring" {
		t.Errorf("collector metrics ingress %v, want the configured Prometheus to the metrics port only", ingress[1])
	}
	if e, ok := get(collectorNP, "spec", "egress").([]interface{}); !ok || len(e) != 0 {
		t.Errorf("collector egress %v, want none", get(collectorNP, "spec", "egress"))
	}

	agentNP := find(t, docs, "NetworkPolicy", "tokenwatch-agent")
	if !selects(get(agentNP, "spec", "podSelector", "matchLabels"), agentLabels) {
		t.Fatal("the agent policy does not select the agents")
	}
	ingress = list(agentNP, "spec", "ingress")
	if len(ingress) != 1 || len(list(ingress[0], "ports")) != 1 || get(ingress[0], "ports", "[0]", "port") != float64(9750) {
		t.Fatalf("agent ingress %v, want the metrics port only", ingress)
	}
	if str(ingress[0], "from", "[0]", "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name") != "monitoring" {
		t.Errorf("agent ingress peers %v, want the configured Prometheus", list(ingress[0], "from"))
	}
	egress := list(agentNP, "spec", "egress")
	if len(egress) != 2 || !selects(get(egress[0], "to", "[0]", "podSelector", "matchLabels"), collectorLabels) ||
		get(egress[0], "ports", "[0]", "port") != float64(9760) || get(egress[1], "to") != nil ||
		get(egress[1], "ports", "[0]", "port") != float64(53) {
		t.Errorf("agent egress %v, want the collector's gRPC port and DNS only", egress)
	}
}

func TestPodMonitorScrapesAgentsAsTheRulesExpect(t *testing.T) {
	docs := renderChart(t, allFeatures())
	pm := find(t, docs, "PodMonitor", "tokenwatch-agent")
	ds := find(t, docs, "DaemonSet", "tokenwatch-agent")
	labels := get(ds, "spec", "template", "metadata", "labels")
	if !selects(get(pm, "spec", "selector", "matchLabels"), labels) {
		t.Error("the PodMonitor does not select the agent pods")
	}
	if job := str(labels, str(pm, "spec", "jobLabel")); job != "tokenwatch-agent" {
		t.Errorf("scraped job would be %q; the rules select job=\"tokenwatch-agent\"", job)
	}
	ep := get(pm, "spec", "podMetricsEndpoints", "[0]")
	if containerPort(t, onlyContainer(t, ds), str(ep, "port")) != 9750 || str(ep, "path") != "/metrics" {
		t.Errorf("PodMonitor endpoint %v", ep)
	}
	if str(pm, "metadata", "labels", "release") != "prometheus" {
		t.Error("metrics.podMonitor.labels are not applied")
	}

	// Every job the alerting rules select is the job of some PodMonitor's pods, so that no
	// alert waits on series nobody scrapes.
	raw, err := os.ReadFile(filepath.Join(sourceDir(), "deploy", "prometheus", "tokenwatch-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ruleJobs := map[string]bool{}
	for _, m := range regexp.MustCompile(`job="([^"]+)"`).FindAllStringSubmatch(string(raw), -1) {
		ruleJobs[m[1]] = true
	}
	if !ruleJobs["tokenwatch-agent"] || !ruleJobs["tokenwatch-collector"] {
		t.Fatalf("could not read the rules' jobs (got %v)", ruleJobs)
	}
	scraped := map[string]bool{}
	for _, m := range scrapedTargets(t, docs) {
		scraped[m.Job] = true
	}
	for job := range ruleJobs {
		if !scraped[job] {
			t.Errorf("the rules select job=%q, which no PodMonitor scrapes (scraped: %v)", job, scraped)
		}
	}
}

// scrapeTarget is a workload a PodMonitor selects, with the job and container port it scrapes.
type scrapeTarget struct {
	Monitor, Workload, Job, Path string
	Port                         float64
}

// scrapedTargets resolves each PodMonitor against the rendered pod templates: which workloads
// its selector matches, the job its jobLabel gives their targets, and the container port its
// endpoints name.
func scrapedTargets(t *testing.T, docs []rendered) []scrapeTarget {
	t.Helper()
	var out []scrapeTarget
	for _, pm := range docs {
		if str(pm.Object, "kind") != "PodMonitor" {
			continue
		}
		for _, w := range docs {
			switch str(w.Object, "kind") {
			case "DaemonSet", "Deployment":
			default:
				continue
			}
			labels := get(w.Object, "spec", "template", "metadata", "labels")
			if !selects(get(pm.Object, "spec", "selector", "matchLabels"), labels) {
				continue
			}
			for _, ep := range list(pm.Object, "spec", "podMetricsEndpoints") {
				out = append(out, scrapeTarget{
					Monitor: str(pm.Object, "metadata", "name"), Workload: str(w.Object, "metadata", "name"),
					Job:  str(labels, str(pm.Object, "spec", "jobLabel")),
					Path: str(ep, "path"), Port: containerPort(t, onlyContainer(t, w.Object), str(ep, "port")),
				})
			}
		}
	}
	return out
}

// collectorFlagNames reads the collector's flags from its source, so that a renamed flag fails
// here rather than crash-looping the collector pod.
func collectorFlagNames(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(sourceDir(), "collector", "collector_main.cc"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`ABSL_FLAG\(\s*[\w:<>]+\s*,\s*(\w+)\s*,`).FindAllStringSubmatch(string(src), -1) {
		names[m[1]] = true
	}
	if !names["listen"] || !names["db"] {
		t.Fatalf("could not read the collector's flags from collector_main.cc (got %v)", names)
	}
	return names
}

// checkCollectorFlagsExist: every flag the chart passes the collector is one it defines
// (absl accepts dashes for underscores).
func checkCollectorFlagsExist(t *testing.T, docs []rendered) {
	t.Helper()
	names := collectorFlagNames(t)
	for _, arg := range stringsOf(list(onlyContainer(t, find(t, docs, "Deployment", "tokenwatch-collector")), "args")) {
		name := strings.SplitN(strings.TrimPrefix(arg, "--"), "=", 2)[0]
		if !strings.HasPrefix(arg, "--") || !names[strings.ReplaceAll(name, "-", "_")] {
			t.Errorf("collector arg %q is not a collector flag (flags: %v)", arg, names)
		}
	}
}

func argWithPrefix(args []string, prefix string) (string, bool) {
	for _, a := range args {
		if strings.HasPrefix(a, prefix) {
			return strings.TrimPrefix(a, prefix), true
		}
	}
	return "", false
}

func TestCollectorMetricsAreExposedAndScraped(t *testing.T) {
	for _, port := range []int{9761, 19761} {
		sets := []string{fmt.Sprintf("collector.metrics.port=%d", port)}
		docs := renderChart(t, Options{ValueFiles: []string{allFeaturesFile()}, Sets: sets})
		dep := find(t, docs, "Deployment", "tokenwatch-collector")
		c := onlyContainer(t, dep)
		checkCollectorFlagsExist(t, docs)
		if addr, _ := argWithPrefix(stringsOf(list(c, "args")), "--metrics-address="); addr != fmt.Sprintf("0.0.0.0:%d", port) {
			t.Errorf("port %d: the collector serves metrics on %q, not on all interfaces at that port", port, addr)
		}
		if got := containerPort(t, c, "metrics"); int(got) != port {
			t.Errorf("collector container port \"metrics\" is %v, want %d", got, port)
		}

		var collector []scrapeTarget
		for _, target := range scrapedTargets(t, docs) {
			if target.Workload == "tokenwatch-collector" {
				collector = append(collector, target)
			} else if target.Job != "tokenwatch-agent" {
				t.Errorf("%s scrapes %s as job %q", target.Monitor, target.Workload, target.Job)
			}
		}
		if len(collector) != 1 || collector[0].Job != "tokenwatch-collector" || int(collector[0].Port) != port ||
			collector[0].Path != "/metrics" {
			t.Errorf("port %d: the collector is scraped as %+v, want once as job tokenwatch-collector "+
				"on /metrics at that port", port, collector)
		}
		if len(collector) == 1 && collector[0].Monitor != "tokenwatch-collector" {
			t.Errorf("the collector is scraped by PodMonitor %s", collector[0].Monitor)
		}
		if str(find(t, docs, "PodMonitor", "tokenwatch-collector"), "metadata", "labels", "release") != "prometheus" {
			t.Error("metrics.podMonitor.labels are not applied to the collector's PodMonitor")
		}

		admitted := false
		for _, rule := range list(find(t, docs, "NetworkPolicy", "tokenwatch-collector"), "spec", "ingress") {
			for _, p := range list(rule, "ports") {
				if get(p, "port") == float64(port) &&
					str(rule, "from", "[0]", "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name") == "monitoring" {
					admitted = true
				}
			}
		}
		if !admitted {
			t.Errorf("the collector's NetworkPolicy does not admit Prometheus to port %d", port)
		}

		// With the default values too: plain installs scrape by annotation.
		dep = find(t, renderChart(t, Options{Sets: sets}), "Deployment", "tokenwatch-collector")
		a := get(dep, "spec", "template", "metadata", "annotations")
		if str(a, "prometheus.io/scrape") != "true" || str(a, "prometheus.io/port") != fmt.Sprint(port) ||
			str(a, "prometheus.io/path") != "/metrics" {
			t.Errorf("collector scrape annotations %v", a)
		}
	}

	// The Service carries gRPC only: metrics are scraped from the pod, as the agents' are, and a
	// LoadBalancer Service would otherwise publish them.
	docs := renderChart(t, Options{})
	for _, p := range list(find(t, docs, "Service", "tokenwatch-collector"), "spec", "ports") {
		if str(p, "targetPort") != "grpc" {
			t.Errorf("the collector Service exposes %v", p)
		}
	}

	// Switched off: no listener, no port, nothing scraped, nothing admitted.
	docs = renderChart(t, Options{ValueFiles: []string{allFeaturesFile()},
		Sets: []string{"collector.metrics.enabled=false"}})
	c := onlyContainer(t, find(t, docs, "Deployment", "tokenwatch-collector"))
	if addr, ok := argWithPrefix(stringsOf(list(c, "args")), "--metrics-address="); !ok || addr != "" {
		t.Errorf("collector.metrics.enabled=false: --metrics-address=%q (set %v), want it empty", addr, ok)
	}
	for _, p := range list(c, "ports") {
		if str(p, "name") != "grpc" {
			t.Errorf("collector.metrics.enabled=false still declares port %v", p)
		}
	}
	if contains(kinds(docs), "PodMonitor/tokenwatch-collector") {
		t.Error("collector.metrics.enabled=false still renders the collector's PodMonitor")
	}
	if n := len(list(find(t, docs, "NetworkPolicy", "tokenwatch-collector"), "spec", "ingress")); n != 1 {
		t.Errorf("collector.metrics.enabled=false: %d ingress rules, want the gRPC one only", n)
	}
	if a := get(find(t, docs, "Deployment", "tokenwatch-collector"), "spec", "template", "metadata",
		"annotations", "prometheus.io/scrape"); a != nil {
		t.Errorf("collector.metrics.enabled=false: prometheus.io/scrape=%v", a)
	}

	chart, err := LoadChart(chartDir())
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = Render(chart, Options{ReleaseName: "tokenwatch", Namespace: "tokenwatch",
		Sets: []string{"collector.metrics.port=9760"}})
	if err == nil || !strings.Contains(err.Error(), "collector.metrics.port must differ") {
		t.Errorf("metrics on the gRPC port: err %v, want a refusal", err)
	}
}

func TestPrometheusRuleIsTheDeployRulesFile(t *testing.T) {
	docs := renderChart(t, allFeatures())
	rule := find(t, docs, "PrometheusRule", "tokenwatch")
	raw, err := os.ReadFile(filepath.Join(sourceDir(), "deploy", "prometheus", "tokenwatch-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want obj
	if err := yaml.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(get(rule, "spec", "groups"), want["groups"]) {
		t.Errorf("the chart's PrometheusRule differs from deploy/prometheus/tokenwatch-rules.yaml "+
			"(run deploy/manifests/generate.sh):\n got %v\nwant %v", get(rule, "spec", "groups"), want["groups"])
	}
	alerts := []string{}
	for _, r := range list(rule, "spec", "groups", "[0]", "rules") {
		alerts = append(alerts, str(r, "alert"))
	}
	wantAlerts := []string{"TokenwatchAgentDown", "TokenwatchAgentNotReady", "TokenwatchProbeDetached",
		"TokenwatchEventsLost", "TokenwatchCriticalFinding", "TokenwatchHighFinding",
		"TokenwatchProcessTableEvicting", "TokenwatchDetectionSlow", "TokenwatchFindingsLost",
		"TokenwatchCollectorUnreachable", "TokenwatchCollectorDown", "TokenwatchCollectorRejecting"}
	if !reflect.DeepEqual(alerts, wantAlerts) {
		t.Errorf("alerts %v, want %v", alerts, wantAlerts)
	}
}

func TestSchemaRejectsBadValues(t *testing.T) {
	chart, err := LoadChart(chartDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ set, field string }{
		{"agent.hookMode=kprobe", "agent.hookMode"},
		{"agent.metricsPort=70000", "agent.metricsPort"},
		{"agent.metricsPort=http", "agent.metricsPort"},
		{"agent.config.dedup_windw=5m", "dedup_windw"},
		{"agent.config.dedup_window=soon", "agent.config.dedup_window"},
		{"agent.config.log_level=verbose", "agent.config.log_level"},
		{"agent.kubeletRoot=var/lib/kubelet", "agent.kubeletRoot"},
		{"agent.privileged=yes", "agent.privileged"},
		{"collector.persistence.size=lots", "collector.persistence.size"},
		{"collector.metrics.port=70000", "collector.metrics.port"},
		{"collector.metrics.enabled=yes", "collector.metrics.enabled"},
		{"collector.metrics.prot=9761", "prot"},
		{"tls.certManager.issuerRef.kind=Vault", "tls.certManager.issuerRef.kind"},
		{"agentt.hookMode=auto", "agentt"},
	} {
		_, err := ComputeValues(chart, Options{Sets: []string{tc.set}})
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("--set %s: err %v, want a schema error naming %s", tc.set, err, tc.field)
		}
	}
	for _, file := range []string{"", allFeaturesFile()} {
		opts := Options{}
		if file != "" {
			opts.ValueFiles = []string{file}
		}
		if _, err := ComputeValues(chart, opts); err != nil {
			t.Errorf("valid values %q rejected: %v", file, err)
		}
	}
}

// TestEveryValueIsCommented: each key in values.yaml has a comment above it, shared at most
// with the sibling keys right below that comment or inherited from its parent key's comment.
// A blank line ends a comment's reach.
func TestEveryValueIsCommented(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir(), "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	key := regexp.MustCompile(`^(\s*)[A-Za-z_][A-Za-z0-9_]*:`)
	var documented func(i int) bool
	documented = func(i int) bool {
		indent := len(key.FindStringSubmatch(lines[i])[1])
		for j := i - 1; j >= 0; j-- {
			trimmed := strings.TrimSpace(lines[j])
			switch {
			case strings.HasPrefix(trimmed, "#"):
				return true
			case trimmed == "" || trimmed == "---":
				return false
			}
			if m := key.FindStringSubmatch(lines[j]); m != nil && len(m[1]) < indent {
				return documented(j)
			}
		}
		return false
	}
	count := 0
	for i, line := range lines {
		if key.MatchString(line) {
			count++
			if !documented(i) {
				t.Errorf("values.yaml:%d: %q has no comment", i+1, strings.TrimSpace(line))
			}
		}
	}
	if count < 20 {
		t.Fatalf("read only %d keys from values.yaml", count)
	}
}
