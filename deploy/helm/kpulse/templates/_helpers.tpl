{{- define "kpulse.labels" -}}
app.kubernetes.io/name: kpulse
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "kpulse.selector" -}}
app.kubernetes.io/name: kpulse
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
