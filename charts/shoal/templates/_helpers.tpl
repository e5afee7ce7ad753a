{{/* The chart's name, or nameOverride. */}}
{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* release-chart, or fullnameOverride; leaves room for component suffixes. */}}
{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "shoal.orchestrator.fullname" -}}
{{- printf "%s-orchestrator" (include "shoal.fullname" .) }}
{{- end }}

{{- define "shoal.executor.fullname" -}}
{{- printf "%s-executor" (include "shoal.fullname" .) }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "shoal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shoal
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "executor"). */}}
{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "shoal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The orchestrator's address as executors and the test pod dial it: the Service, or
with several replicas every pod's stable name (they follow whichever leads). */}}
{{- define "shoal.orchestrator.address" -}}
{{- $scheme := ternary "https" "http" (ne .Values.tls.secretName "") }}
{{- $name := include "shoal.orchestrator.fullname" . }}
{{- $port := .Values.orchestrator.service.port }}
{{- if gt (int .Values.orchestrator.replicas) 1 }}
{{- $pods := list }}
{{- range $i := until (int .Values.orchestrator.replicas) }}
{{- $pods = append $pods (printf "%s://%s-%d.%s-headless.%s.svc:%v" $scheme $name $i $name $.Release.Namespace $port) }}
{{- end }}
{{- join "," $pods }}
{{- else }}
{{- printf "%s://%s:%v" $scheme $name $port }}
{{- end }}
{{- end }}

{{/* Environment for S3 credentials, from the referenced Secret. */}}
{{- define "shoal.s3Credentials" -}}
{{- if .Values.s3.credentialsSecret -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.credentialsSecret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.credentialsSecret }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end }}

{{/* Executor labels as KEY=VALUE,KEY=VALUE, sorted. */}}
{{- define "shoal.executorLabels" -}}
{{- $pairs := list }}
{{- range $key, $value := .Values.executor.labels }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Seconds in a duration such as 90s, 5m or 1h (the daemons' own syntax). */}}
{{- define "shoal.seconds" -}}
{{- $d := toString . }}
{{- if hasSuffix "ms" $d }}{{ div (trimSuffix "ms" $d | int) 1000 }}
{{- else if hasSuffix "s" $d }}{{ trimSuffix "s" $d | int }}
{{- else if hasSuffix "m" $d }}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else if hasSuffix "h" $d }}{{ mul (trimSuffix "h" $d | int) 3600 }}
{{- else }}{{ fail (printf "cannot read the duration %q: use a number with s, m or h" $d) }}
{{- end }}
{{- end }}

{{- /*
OpenTelemetry settings of both daemons (ConfigMap data), when tracing is on.
*/ -}}
{{- define "shoal.tracingConfig" -}}
{{- if .Values.tracing.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .Values.tracing.otlpEndpoint | quote }}
OTEL_TRACES_SAMPLER: parentbased_traceidratio
OTEL_TRACES_SAMPLER_ARG: {{ .Values.tracing.sampleRatio | quote }}
{{- end }}
{{- end }}

{{- /*
The pod's identity as OpenTelemetry resource attributes (container env), when tracing is
on: spans name the pod and namespace they came from.
*/ -}}
{{- define "shoal.tracingEnv" -}}
{{- if .Values.tracing.otlpEndpoint }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "service.instance.id=$(POD_NAME),k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
{{- end }}
{{- end }}
