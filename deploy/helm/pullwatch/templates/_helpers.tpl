{{/*
No Helm standard labels (helm.sh/chart, app.kubernetes.io/managed-by, ...):
the chart renders exactly the objects of deploy/, labels included
(e2e/deploy/helm_test.go). Helm tracks its objects by annotations.
*/}}

{{/* pullwatch.labels: the labels of an object of component (agent|aggregator). */}}
{{- define "pullwatch.labels" -}}
app.kubernetes.io/name: pullwatch-{{ . }}
app.kubernetes.io/component: {{ . }}
app.kubernetes.io/part-of: pullwatch
{{- end }}

{{/* pullwatch.selector: the selector labels of component (agent|aggregator). */}}
{{- define "pullwatch.selector" -}}
app.kubernetes.io/name: pullwatch-{{ . }}
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/*
pullwatch.image: registry/repository:tag, or registry/repository@digest when
a digest is set (the tag is then ignored, as kustomize's images: digest does).
*/}}
{{- define "pullwatch.image" -}}
{{- $ref := .repository -}}
{{- if .registry }}{{ $ref = printf "%s/%s" (trimSuffix "/" .registry) .repository }}{{ end -}}
{{- if .digest -}}
{{- printf "%s@%s" $ref .digest -}}
{{- else if .tag -}}
{{- printf "%s:%s" $ref (toString .tag) -}}
{{- else -}}
{{- $ref -}}
{{- end -}}
{{- end }}
