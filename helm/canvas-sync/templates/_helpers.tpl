{{/* Chart name, truncated to 63 characters. */}}
{{- define "canvas-sync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name. */}}
{{- define "canvas-sync.fullname" -}}
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

{{/* Standard labels. */}}
{{- define "canvas-sync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "canvas-sync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "canvas-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "canvas-sync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Common annotations block (empty when none). */}}
{{- define "canvas-sync.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "canvas-sync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "canvas-sync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "canvas-sync.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "canvas-sync.dynamodbLocal.fullname" -}}
{{- printf "%s-dynamodb-local" (include "canvas-sync.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The endpoint the app talks to: DynamoDB Local when enabled, else dynamodb.endpoint. */}}
{{- define "canvas-sync.dynamodbEndpoint" -}}
{{- if .Values.dynamodbLocal.enabled -}}
{{- if eq .Values.dynamodbLocal.mode "sidecar" -}}
{{- printf "http://127.0.0.1:%d" (int .Values.dynamodbLocal.port) -}}
{{- else -}}
{{- printf "http://%s:%d" (include "canvas-sync.dynamodbLocal.fullname" .) (int .Values.dynamodbLocal.port) -}}
{{- end -}}
{{- else -}}
{{- .Values.dynamodb.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "canvas-sync.redis.fullname" -}}
{{- printf "%s-valkey" (include "canvas-sync.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The relay's Redis URL: the in-chart Valkey, externalRedis.url, or empty (no relay). */}}
{{- define "canvas-sync.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s:%d/0" (include "canvas-sync.redis.fullname" .) (int .Values.redis.port) -}}
{{- else -}}
{{- .Values.externalRedis.url -}}
{{- end -}}
{{- end -}}

{{/* The port the relay connects to (for the NetworkPolicy). */}}
{{- define "canvas-sync.redisPort" -}}
{{- if .Values.redis.enabled -}}
{{- .Values.redis.port -}}
{{- else if regexMatch "^rediss?://[^/]*:[0-9]+(/.*)?$" .Values.externalRedis.url -}}
{{- regexReplaceAll "^rediss?://[^/]*:([0-9]+)(/.*)?$" .Values.externalRedis.url "${1}" -}}
{{- else -}}
6379
{{- end -}}
{{- end -}}

{{/* Refuse value combinations that cannot work, with a message that says why. */}}
{{- define "canvas-sync.validate" -}}
{{- if and .Values.dynamodbLocal.enabled (eq .Values.dynamodbLocal.mode "sidecar") -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}
{{- fail "dynamodbLocal.mode=sidecar gives every pod its own database, so it needs exactly one replica: set replicaCount=1 and autoscaling.enabled=false, or use dynamodbLocal.mode=shared" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.dynamodbLocal.enabled (eq (int .Values.dynamodbLocal.port) (int .Values.containerPort)) -}}
{{- fail "dynamodbLocal.port and containerPort must differ" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not (or .Values.auth.jwksUrl .Values.auth.existingSecret)) -}}
{{- fail "auth.enabled needs auth.jwksUrl (your issuer's JWKS) or auth.existingSecret (an HS256 secret); for development only, auth.enabled=false" -}}
{{- end -}}
{{- if and .Values.auth.jwksUrl .Values.auth.existingSecret -}}
{{- fail "auth.jwksUrl and auth.existingSecret are two ways to verify tokens: choose one" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.externalRedis.url -}}
{{- fail "redis.enabled runs a Valkey in the chart and externalRedis.url names another: choose one" -}}
{{- end -}}
{{- if and .Values.externalRedis.existingSecret (not .Values.externalRedis.url) -}}
{{- fail "externalRedis.existingSecret holds the password of externalRedis.url, which is empty" -}}
{{- end -}}
{{- if and .Values.dynamodbLocal.enabled .Values.dynamodb.createTable -}}
{{- fail "dynamodb.createTable runs before install, when DynamoDB Local is not up yet; with dynamodbLocal.enabled the app creates the table itself: set dynamodb.createTable=false" -}}
{{- end -}}
{{- end -}}

{{/* Seconds Kubernetes waits after SIGTERM: preStop pause + flush + margin. */}}
{{- define "canvas-sync.terminationGracePeriod" -}}
{{- add (int .Values.shutdown.preStopSleep) (int (ceil .Values.shutdown.timeout)) 10 -}}
{{- end -}}

{{/* Selector of the canvas-sync pods (not DynamoDB Local's nor the hook Job's). */}}
{{- define "canvas-sync.serverSelectorLabels" -}}
{{ include "canvas-sync.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end -}}
