{{/* Names and labels. */}}
{{- define "virtfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "virtfleet.fullname" -}}
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

{{- define "virtfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "virtfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "virtfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "virtfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: virtfleet
{{- end }}

{{- define "virtfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "virtfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "virtfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when the operator watches every namespace (no watchNamespaces), else "". */}}
{{- define "virtfleet.clusterwide" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
RBAC: exactly the verbs the operator uses; docs/rbac.md gives the reason for each rule, and
tests/integration/test_helm_chart.py checks the granted set against that table.
`get` stands beside `list` wherever the operator lists: it reveals nothing that `list` does not.
*/}}

{{/* Cluster-scoped resources (and MigrationPolicies, which KubeVirt makes cluster-scoped): a ClusterRole. */}}
{{- define "virtfleet.clusterRules" -}}
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
{{- if .Values.drain.cordonNodes }}
- apiGroups: [""]
  resources: [nodes]
  verbs: [patch]
{{- end }}
{{- if not (include "virtfleet.clusterwide" .) }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end }}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [kubevirt.io]
  resources: [kubevirts]
  verbs: [get, list]
- apiGroups: [migrations.kubevirt.io]
  resources: [migrationpolicies]
  verbs: [get, list, watch, create, patch, delete]
{{- if and (not .Values.operator.standalone) (include "virtfleet.clusterwide" .) }}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch]
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  resourceNames: [{{ .Values.operator.peeringName }}]
  verbs: [patch]
{{- end }}
{{- end }}

{{/* Namespaced resources: in the ClusterRole when watching all namespaces, else a Role per namespace. */}}
{{- define "virtfleet.namespacedRules" -}}
- apiGroups: [virtfleet.io]
  resources: [vmtemplates, virtualmachinepools, migrationplans]
  verbs: [get, list, watch, patch]
- apiGroups: [virtfleet.io]
  resources: [vmtemplates/status, virtualmachinepools/status, migrationplans/status]
  verbs: [patch]
- apiGroups: [kubevirt.io]
  resources: [virtualmachines]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [kubevirt.io]
  resources: [virtualmachineinstances]
  verbs: [get, list, watch, patch]
- apiGroups: [kubevirt.io]
  resources: [virtualmachineinstancemigrations]
  verbs: [get, list, watch, create, delete]
- apiGroups: [apps]
  resources: [controllerrevisions]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
{{- if and (not .Values.operator.standalone) (not (include "virtfleet.clusterwide" .)) }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch]
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  resourceNames: [{{ .Values.operator.peeringName }}]
  verbs: [patch]
{{- end }}
{{- end }}
