{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "sft-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "sft-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sft-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sft-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "sft-operator.labels" -}}
helm.sh/chart: {{ include "sft-operator.chart" . }}
{{ include "sft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sft-operator
{{- end }}

{{- define "sft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sft-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator joins the peering named in sft_operator.handlers; one release per cluster. */}}
{{- define "sft-operator.peeringName" -}}
sft-operator
{{- end }}

{{- define "sft-operator.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "sft-operator.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/*
Fail the render, with the value to change, when a Prometheus Operator kind is not served by
the cluster. `helm template` knows only the APIs passed with --api-versions.
Usage: include "sft-operator.requireMonitoringApi" (list . "ServiceMonitor" "monitoring.serviceMonitor.enabled")
*/}}
{{- define "sft-operator.requireMonitoringApi" -}}
{{- $ctx := index . 0 }}
{{- $kind := index . 1 }}
{{- $value := index . 2 }}
{{- if not $ctx.Values.monitoring.skipApiCheck }}
{{- if not ($ctx.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind)) }}
{{- fail (printf "\n\n%s=true, but the cluster does not serve monitoring.coreos.com/v1/%s.\nInstall the Prometheus Operator CRDs first (for example with the kube-prometheus-stack chart) or set %s=false.\nWith `helm template`, pass --api-versions monitoring.coreos.com/v1/%s (or set monitoring.skipApiCheck=true).\n" $value $kind $value $kind) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The operator's settings as container env. Names and formats are those read by
sft_operator.settings.OperatorSettings.from_env.
*/}}
{{- define "sft-operator.operatorEnv" -}}
- name: SFT_TRAINER_IMAGE
  value: {{ include "sft-operator.trainerImage" . | quote }}
- name: SFT_IMAGE_PULL_POLICY
  value: {{ .Values.trainer.image.pullPolicy | quote }}
{{- with .Values.trainer.resources }}
- name: SFT_DEFAULT_RESOURCES
  value: {{ toJson . | quote }}
{{- end }}
{{- with .Values.trainer.storageEndpoint }}
- name: SFT_STORAGE_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.trainer.defaultQueueName }}
- name: SFT_DEFAULT_QUEUE_NAME
  value: {{ . | quote }}
{{- end }}
- name: SFT_TRAINER_METRICS_PORT
  value: {{ .Values.trainer.metricsPort | quote }}
- name: SFT_TERMINATION_GRACE_SECONDS
  value: {{ .Values.trainer.terminationGracePeriodSeconds | quote }}
- name: SFT_SHM_SIZE
  value: {{ .Values.trainer.shmSize | quote }}
- name: SFT_MAX_PREEMPTIONS
  value: {{ .Values.trainer.maxPreemptions | quote }}
- name: SFT_RESYNC_SECONDS
  value: {{ .Values.operator.resyncSeconds | quote }}
- name: SFT_OPERATOR_METRICS_PORT
  value: {{ .Values.operator.metricsPort | quote }}
- name: SFT_OPERATOR_HEALTH_PORT
  value: {{ .Values.operator.healthPort | quote }}
- name: SFT_PEERING_LIFETIME_SECONDS
  value: {{ .Values.operator.peering.lifetimeSeconds | quote }}
{{- with .Values.trainer.imagePullSecrets }}
- name: SFT_IMAGE_PULL_SECRETS
  value: {{ toJson . | quote }}
{{- end }}
- name: SFT_NETWORK_POLICY
  value: {{ .Values.trainer.networkPolicy.enabled | quote }}
{{- if .Values.trainer.networkPolicy.enabled }}
- name: SFT_METRICS_FROM
  value: {{ include "sft-operator.metricsFrom" . | quote }}
{{- end }}
{{- end }}

{{/*
The peers that may reach trainer pods' metrics port, as JSON: the release namespace (where the
chart's PodMonitor lives) and trainer.networkPolicy.metricsFrom.
*/}}
{{- define "sft-operator.metricsFrom" -}}
{{- $release := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace)) }}
{{- prepend (.Values.trainer.networkPolicy.metricsFrom | default list) $release | toJson }}
{{- end }}
