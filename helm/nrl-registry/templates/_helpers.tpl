{{/*
Names and labels, as `helm create` lays them out.
*/}}
{{- define "nrl-registry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: 63 characters at most (a DNS label). If the release name contains the
chart name it is used as is.
*/}}
{{- define "nrl-registry.fullname" -}}
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

{{- define "nrl-registry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nrl-registry.labels" -}}
{{ include "nrl-registry.selectorLabels" . }}
{{ include "nrl-registry.releaseLabels" . }}
{{- end }}

{{/*
Labels every resource of the release carries, without its name and component (which select).
*/}}
{{- define "nrl-registry.releaseLabels" -}}
helm.sh/chart: {{ include "nrl-registry.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "nrl-registry.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "nrl-registry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nrl-registry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: registry
{{- end }}

{{- define "nrl-registry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nrl-registry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nrl-registry.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The bundled Redis: name and labels (a component of this release).
*/}}
{{- define "nrl-registry.redis.fullname" -}}
{{- printf "%s-redis" (include "nrl-registry.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "nrl-registry.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nrl-registry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "nrl-registry.redis.labels" -}}
{{ include "nrl-registry.redis.selectorLabels" . }}
{{ include "nrl-registry.releaseLabels" . }}
{{- end }}

{{- define "nrl-registry.redis.bundled" -}}
{{- if and (eq .Values.store.mode "redis") .Values.store.redis.bundled.enabled }}true{{- end }}
{{- end }}

{{/*
`user:$(NRL_REDIS_PASSWORD)@` when a Redis password is configured. Kubernetes expands
$(NRL_REDIS_PASSWORD) from the container's secret-backed variable, so the password never appears
in the manifest.
*/}}
{{- define "nrl-registry.redisCredentials" -}}
{{- if .Values.store.auth.existingSecret }}
{{- printf "%s:$(NRL_REDIS_PASSWORD)@" .Values.store.auth.username }}
{{- end }}
{{- end }}

{{/*
NRL_STORE for the chosen topology.
*/}}
{{- define "nrl-registry.storeUrl" -}}
{{- $credentials := include "nrl-registry.redisCredentials" . }}
{{- if eq .Values.store.mode "memory" }}
{{- print "memory" }}
{{- else if eq .Values.store.mode "redis" }}
{{- if .Values.store.redis.bundled.enabled }}
{{- printf "redis://%s%s:6379/0" $credentials (include "nrl-registry.redis.fullname" .) }}
{{- else }}
{{- $parts := splitn "://" 2 .Values.store.redis.url }}
{{- printf "%s://%s%s" $parts._0 $credentials $parts._1 }}
{{- end }}
{{- else }}
{{- $scheme := ternary "rediss+cluster" "redis+cluster" .Values.store.redisCluster.tls }}
{{- printf "%s://%s%s" $scheme $credentials (join "," .Values.store.redisCluster.nodes) }}
{{- end }}
{{- end }}

{{/*
Non-empty when the chart generates the development HS256 secret: asked to, and no other
authentication configured, so any real setting (an identity provider's key, a secret of your own,
mTLS) replaces it rather than sitting beside it.
*/}}
{{- define "nrl-registry.hs256.generated" -}}
{{- $auth := .Values.auth }}
{{- if and $auth.jwt.hs256.generate (not (or $auth.jwt.existingSecret $auth.jwt.hs256.existingSecret $auth.mtls.enabled)) }}true{{- end }}
{{- end }}

{{/*
The Secret the HS256 secret is mounted from (NRL_JWT_HS256_SECRET_FILE): yours, the generated one,
or none.
*/}}
{{- define "nrl-registry.hs256.secretName" -}}
{{- if .Values.auth.jwt.hs256.existingSecret }}
{{- .Values.auth.jwt.hs256.existingSecret }}
{{- else if include "nrl-registry.hs256.generated" . }}
{{- printf "%s-dev-jwt" (include "nrl-registry.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
Settings that cannot work together fail the render with the reason, before anything reaches the
cluster. (values.schema.json checks each value on its own.)
*/}}
{{- define "nrl-registry.validate" -}}
{{- $mode := .Values.store.mode }}
{{- if and (eq $mode "memory") .Values.autoscaling.enabled }}
{{- fail "store.mode=memory keeps pointers in one process: it runs exactly one replica, so autoscaling.enabled must be false" }}
{{- end }}
{{- if eq $mode "redis" }}
{{- if and .Values.store.redis.bundled.enabled .Values.store.redis.url }}
{{- fail "store.mode=redis: set either store.redis.url (external Redis) or store.redis.bundled.enabled, not both" }}
{{- end }}
{{- if not (or .Values.store.redis.bundled.enabled .Values.store.redis.url) }}
{{- fail "store.mode=redis needs store.redis.url (external Redis) or store.redis.bundled.enabled=true" }}
{{- end }}
{{- if and .Values.store.redis.url (not (regexMatch "^rediss?://[^@/]+(/[0-9]+)?$" .Values.store.redis.url)) }}
{{- fail "store.redis.url must be redis://host:port[/db] or rediss://host:port[/db], without credentials (put the password in store.auth.existingSecret)" }}
{{- end }}
{{- end }}
{{- if and (eq $mode "redisCluster") (not .Values.store.redisCluster.nodes) }}
{{- fail "store.mode=redisCluster needs store.redisCluster.nodes (host:port of any cluster nodes)" }}
{{- end }}
{{- if not (or .Values.auth.jwt.existingSecret (include "nrl-registry.hs256.secretName" .) .Values.auth.mtls.enabled) }}
{{- fail "the registry listens beyond loopback only with authentication: set auth.jwt.existingSecret and/or auth.mtls.enabled (for development: auth.jwt.hs256.existingSecret, or auth.jwt.hs256.generate=true)" }}
{{- end }}
{{- if and .Values.auth.mtls.enabled (not .Values.tls.enabled) }}
{{- fail "auth.mtls.enabled needs tls.enabled and tls.existingSecret" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- if .Values.fhir.enabled }}
{{- $fhir := int .Values.service.fhirPort }}
{{- if or (eq $fhir (int .Values.service.grpcPort)) (eq $fhir (int .Values.service.adminPort)) }}
{{- fail (printf "service.fhirPort (%d) must differ from service.grpcPort and service.adminPort: each listener needs its own port" $fhir) }}
{{- end }}
{{- end }}
{{- $drain := add .Values.config.shutdownGraceSeconds .Values.preStopSleepSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $drain) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.shutdownGraceSeconds + preStopSleepSeconds (%d), or Kubernetes kills calls still draining" (int .Values.terminationGracePeriodSeconds) (int $drain)) }}
{{- end }}
{{- end }}

{{/*
Non-empty when the registry needs files from the -files ConfigMap.
*/}}
{{- define "nrl-registry.hasConfigFiles" -}}
{{- if or .Values.config.regions .Values.config.pointerTypes .Values.auth.mtls.enabled }}true{{- end }}
{{- end }}
