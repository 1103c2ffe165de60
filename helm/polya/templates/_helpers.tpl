{{- define "polya.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "polya.labels" -}}
app.kubernetes.io/name: polya-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "polya.selector" -}}
app.kubernetes.io/name: polya-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
