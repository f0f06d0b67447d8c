{{/* Names, labels and the command lines shared by the DaemonSet and the cleanup hook. */}}

{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "shoal.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "shoal.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shoal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "shoal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "shoal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shoal.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shoal.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "shoal.pskSecretName" -}}
{{- default (printf "%s-psk" (include "shoal.fullname" .)) .Values.p2p.psk.existingSecret }}
{{- end }}

{{- define "shoal.bootstrapServiceName" -}}
{{- printf "%s-bootstrap" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The allowlist as one comma-separated flag value. Refuses the configurations that turned the
user's Spegel into a catch-all: an empty list, or a `*`/`_default` entry, without allRegistries.
*/}}
{{- define "shoal.registries" -}}
{{- if .Values.shoal.allRegistries }}
{{- print "--all-registries" }}
{{- else }}
{{- $regs := list }}
{{- range .Values.shoal.mirroredRegistries }}
{{- $r := toString . | trim }}
{{- if or (eq $r "*") (eq $r "_default") }}
{{- fail (printf "shoal.mirroredRegistries contains %q: use shoal.allRegistries=true for a catch-all" $r) }}
{{- end }}
{{- if $r }}
{{- $regs = append $regs $r }}
{{- end }}
{{- end }}
{{- if not $regs }}
{{- fail "shoal.mirroredRegistries is empty: list the registries to mirror (an empty list never means 'all'; set shoal.allRegistries=true for a catch-all)" }}
{{- end }}
{{- printf "--registries=%s" (join "," $regs) }}
{{- end }}
{{- end }}

{{/* The hosts directory as seen inside the pods: the same path as on the node. */}}
{{- define "shoal.hostsDir" -}}
{{- .Values.shoal.containerdRegistryConfigPath }}
{{- end }}

{{/*
`shoal configure` arguments (init container). The uninstall hook runs the same line plus
--uninstall, so both always agree on the directory, mirror and registries.
*/}}
{{- define "shoal.configureArgs" -}}
- configure
- --hosts-dir={{ include "shoal.hostsDir" . }}
- --mirror=http://127.0.0.1:{{ .Values.ports.mirror }}
- {{ include "shoal.registries" . }}
- --resolve-tags={{ .Values.shoal.resolveTags }}
{{- end }}

{{- define "shoal.hostsVolume" -}}
- name: containerd-hosts
  hostPath:
    path: {{ include "shoal.hostsDir" . }}
    # Directory, not DirectoryOrCreate: a wrong path must fail the pod visibly rather than
    # write files containerd never reads.
    type: Directory
{{- end }}

{{- define "shoal.containerSecurityContext" -}}
# root only to reach the root-owned containerd socket and hosts directory; no capabilities.
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
`--<flag>=<value>` lines for the entries of a dict whose value is set; `null` keeps the daemon's
default. Whole numbers are printed as integers (YAML numbers reach templates as float64, which
would print 67108864 as 6.7108864e+07).
*/}}
{{- define "shoal.optionalFlags" -}}
{{- range $flag, $value := . }}
{{- if not (kindIs "invalid" $value) }}
- --{{ $flag }}={{ if kindIs "float64" $value }}{{ int64 $value }}{{ else }}{{ $value }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
