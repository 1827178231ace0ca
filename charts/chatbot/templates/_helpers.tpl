{{/* Names, labels and the values every template shares. */}}

{{- define "chatbot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name: the release name, or "<release>-chatbot" when it does not
     already contain the chart's name. */}}
{{- define "chatbot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "chatbot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: include "chatbot.selectorLabels" (list . "operator") */}}
{{- define "chatbot.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "chatbot.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "chatbot.labels" -}}
{{- $root := index . 0 -}}
{{ include "chatbot.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: chatbot
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ include "chatbot.chart" $root }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Images. The tag defaults to the chart's appVersion (the service's: "<appVersion>-<variant>");
     a digest, when given, pins the image. */}}
{{- define "chatbot.image" -}}
{{- $ref := printf "%s:%s" .repository .tag -}}
{{- if .digest -}}{{- $ref = printf "%s@%s" $ref .digest -}}{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "chatbot.operatorImage" -}}
{{- $img := .Values.operator.image -}}
{{- include "chatbot.image" (dict "repository" $img.repository "tag" (default .Chart.AppVersion $img.tag) "digest" $img.digest) -}}
{{- end -}}

{{- define "chatbot.serviceImage" -}}
{{- $img := .Values.serviceImage -}}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $img.variant) $img.tag -}}
{{- include "chatbot.image" (dict "repository" $img.repository "tag" $tag "digest" $img.digest) -}}
{{- end -}}

{{- define "chatbot.operatorAccount" -}}
{{- printf "%s-operator" (include "chatbot.fullname" .) -}}
{{- end -}}

{{/* The pods' security settings: non-root (uid/gid from values), RuntimeDefault seccomp;
     containers: no privilege escalation, read-only root filesystem, no capabilities. */}}
{{- define "chatbot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsUser }}
fsGroup: {{ .runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "chatbot.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* MongoDB for the services: which Secret and key hold the connection string (MONGO_URL).
     Empty when there is none (the services then keep history in their pod). */}}
{{- define "chatbot.mongoSecretName" -}}
{{- if .Values.mongodb.enabled -}}
{{- default (printf "%s-mongodb" (include "chatbot.fullname" .)) .Values.mongodb.auth.existingSecret -}}
{{- else if .Values.externalMongo.existingSecret -}}
{{- .Values.externalMongo.existingSecret -}}
{{- else if .Values.externalMongo.url -}}
{{- printf "%s-mongodb" (include "chatbot.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "chatbot.mongoSecretKey" -}}
{{- if and (not .Values.mongodb.enabled) .Values.externalMongo.existingSecret -}}
{{- .Values.externalMongo.existingSecretKey -}}
{{- else -}}
url
{{- end -}}
{{- end -}}

{{- define "chatbot.openaiSecretName" -}}
{{- if .Values.openai.existingSecret -}}
{{- .Values.openai.existingSecret -}}
{{- else if .Values.openai.apiKey -}}
{{- printf "%s-openai" (include "chatbot.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "chatbot.openaiSecretKey" -}}
{{- if .Values.openai.existingSecret -}}{{ .Values.openai.existingSecretKey }}{{- else -}}api-key{{- end -}}
{{- end -}}

{{- define "chatbot.apiKeysSecretName" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{- .Values.apiKeys.existingSecret -}}
{{- else if .Values.apiKeys.keys -}}
{{- printf "%s-api-keys" (include "chatbot.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "chatbot.apiKeysSecretKey" -}}
{{- if .Values.apiKeys.existingSecret -}}{{ .Values.apiKeys.existingSecretKey }}{{- else -}}keys.json{{- end -}}
{{- end -}}

{{/* Rules across several values, checked before anything renders. */}}
{{- define "chatbot.validate" -}}
{{- if and .Values.apiKeys.keys .Values.apiKeys.existingSecret -}}
{{- fail "apiKeys.keys and apiKeys.existingSecret are exclusive" -}}
{{- end -}}
{{- $names := dict -}}
{{- range $i, $k := .Values.apiKeys.keys -}}
{{- if hasKey $names $k.name -}}
{{- fail (printf "apiKeys.keys[%d] (%s): duplicate name (also apiKeys.keys[%v])" $i $k.name (get $names $k.name)) -}}
{{- end -}}
{{- $_ := set $names $k.name $i -}}
{{- end -}}
{{- if and .Values.mongodb.enabled (or .Values.externalMongo.url .Values.externalMongo.existingSecret) -}}
{{- fail "externalMongo.url/existingSecret and mongodb.enabled=true are exclusive: set mongodb.enabled=false to use an external MongoDB" -}}
{{- end -}}
{{- if and .Values.externalMongo.url .Values.externalMongo.existingSecret -}}
{{- fail "externalMongo.url and externalMongo.existingSecret are exclusive: give the URL in values or in your Secret, not both" -}}
{{- end -}}
{{- if and .Values.openai.apiKey .Values.openai.existingSecret -}}
{{- fail "openai.apiKey and openai.existingSecret are exclusive" -}}
{{- end -}}
{{- if and .Values.mongodb.enabled .Values.mongodb.auth.existingSecret .Values.mongodb.auth.rootPassword -}}
{{- fail "mongodb.auth.rootPassword and mongodb.auth.existingSecret are exclusive" -}}
{{- end -}}
{{- end -}}
