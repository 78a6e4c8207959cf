{{/* The chart name, or nameOverride. */}}
{{- define "tokenwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else the release name when
it already contains the chart name, else "<release>-<chart>". Truncated so that
the longest suffix ("-collector-tls") still fits a 63-character name.
*/}}
{{- define "tokenwatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := include "tokenwatch.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tokenwatch.agent.fullname" -}}
{{- printf "%s-agent" (include "tokenwatch.fullname" .) }}
{{- end }}

{{- define "tokenwatch.collector.fullname" -}}
{{- printf "%s-collector" (include "tokenwatch.fullname" .) }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "tokenwatch.labels" -}}
app.kubernetes.io/name: {{ include "tokenwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "tokenwatch.versionLabels" . }}
{{- end }}

{{/* The labels that are not selector labels, for pod templates. */}}
{{- define "tokenwatch.versionLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokenwatch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the agent pods; never change them across versions. */}}
{{- define "tokenwatch.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{/* Selector labels of the collector pod; never change them across versions. */}}
{{- define "tokenwatch.collector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: collector
{{- end }}

{{/*
An image reference. Call with (dict "image" .Values.agent.image "root" .):
registry/repository, then @digest if set, else :tag (default appVersion).
*/}}
{{- define "tokenwatch.image" -}}
{{- $root := .root }}
{{- $ref := printf "%s/%s" $root.Values.image.registry .image.repository }}
{{- if .image.digest }}
{{- printf "%s@%s" $ref .image.digest }}
{{- else }}
{{- printf "%s:%s" $ref (default $root.Chart.AppVersion $root.Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The collector's in-cluster DNS name, which its server certificate must carry. */}}
{{- define "tokenwatch.collector.host" -}}
{{- printf "%s.%s.svc" (include "tokenwatch.collector.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Secret holding the collector's server certificate. */}}
{{- define "tokenwatch.collector.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "tokenwatch.collector.fullname" .) }}
{{- else }}
{{- required "tls.collectorSecret is required when tls.enabled and not tls.certManager.enabled" .Values.tls.collectorSecret }}
{{- end }}
{{- end }}

{{/* Secret the agents mount: ca.crt, and their client certificate with clientAuth. */}}
{{- define "tokenwatch.agent.tlsSecret" -}}
{{- if and .Values.tls.clientAuth .Values.tls.certManager.enabled }}
{{- fail "tls.clientAuth needs a client certificate naming every node (tls.agentSecret); cert-manager cannot issue it through this chart: turn off tls.certManager.enabled or tls.clientAuth" }}
{{- else if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "tokenwatch.agent.fullname" .) }}
{{- else }}
{{- required "tls.agentSecret is required when tls.enabled and not tls.certManager.enabled" .Values.tls.agentSecret }}
{{- end }}
{{- end }}

{{/* The agent's capabilities: DESIGN.md section 4, CAP_SYS_ADMIN only for fanotify. */}}
{{- define "tokenwatch.agent.capabilities" -}}
- BPF
- PERFMON
- SYS_RESOURCE
- SYS_PTRACE
- DAC_READ_SEARCH
{{- if eq .Values.agent.hookMode "fanotify" }}
- SYS_ADMIN
{{- end }}
{{- end }}

{{/*
The agent's config file. The chart owns the keys that must agree with the pod
spec (mounts, ports, hook mode, collector address and TLS files); agent.config
gives the rest.
Empty lists are left out so that the agent's built-in defaults apply.
*/}}
{{- define "tokenwatch.agent.config" -}}
{{- $config := dict }}
{{- range $key, $value := .Values.agent.config }}
{{- if or (kindIs "string" $value) (not (empty $value)) }}
{{- $_ := set $config $key $value }}
{{- end }}
{{- end }}
{{- $_ := set $config "kubelet_root" .Values.agent.kubeletRoot }}
{{- $_ := set $config "state_dir" "/var/lib/tokenwatch" }}
{{- $_ := set $config "metrics_address" (printf "0.0.0.0:%d" (int .Values.agent.metricsPort)) }}
{{- $_ := set $config "hook_mode" .Values.agent.hookMode }}
{{- if .Values.collector.enabled }}
{{- $_ := set $config "collector" (printf "%s:%d" (include "tokenwatch.collector.host" .) (int .Values.collector.port)) }}
{{- if .Values.tls.enabled }}
{{- $_ := set $config "collector_tls_ca" "/etc/tokenwatch-tls/ca.crt" }}
{{- if .Values.tls.clientAuth }}
{{- $_ := set $config "collector_tls_cert" "/etc/tokenwatch-tls/tls.crt" }}
{{- $_ := set $config "collector_tls_key" "/etc/tokenwatch-tls/tls.key" }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $config }}
{{- end }}
