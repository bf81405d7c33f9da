{{/* Names: <release>-server, <release>-agent, ... (63 characters at most). */}}
{{- define "sigil.name" -}}
{{- printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sigil.labels" -}}
app.kubernetes.io/name: {{ include "sigil.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: sigil
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "sigil.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sigil.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* image: root, repository */}}
{{- define "sigil.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "sigil.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "sigil.bundleConfigMap" -}}
{{- default (printf "%s-bundle" .Release.Name) .Values.server.bundleConfigMap -}}
{{- end -}}

{{/* Paths inside the server pod. */}}
{{- define "sigil.adminVolume" -}}/run/sigil/admin{{- end -}}
{{- define "sigil.adminSocket" -}}/run/sigil/admin/private/api.sock{{- end -}}

{{/* The container securityContext every non-privileged component gets. */}}
{{- define "sigil.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The agent's admin socket directory on the node (CSI waitForIdentity); one per release, so that two
releases (two trust domains) can share the nodes. */}}
{{- define "sigil.agentAdminDir" -}}/run/sigil/{{ .Release.Name }}/agent-admin{{- end -}}
{{- define "sigil.waitForIdentity" -}}
{{- if and .Values.csiDriver.enabled (not (regexMatch "^(0+(\\.0+)?(ns|us|µs|ms|s|m|h))+$" .Values.csiDriver.waitForIdentity)) -}}true{{- end -}}
{{- end -}}

{{/* Whether the bundle endpoint serves a certificate from a Secret (federation, https_web). */}}
{{- define "sigil.federationWeb" -}}
{{- if and .Values.federation.enabled (eq .Values.federation.bundleEndpoint.profile "https_web") -}}true{{- end -}}
{{- end -}}
