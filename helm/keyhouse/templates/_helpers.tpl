{{/* Chart name, overridable. */}}
{{- define "keyhouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource-name prefix: <release>-<name>, or <release> when it already contains <name>. */}}
{{- define "keyhouse.fullname" -}}
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

{{/* "<fullname>-<suffix>", at most 63 characters. Call with (list $ "suffix"). */}}
{{- define "keyhouse.suffixedName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "keyhouse.fullname" $root | trunc 40 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The two services, keyed by their values block. For each: the component name (also the binary and
the default OTEL_SERVICE_NAME), the gRPC service its readiness probe asks about, and the key of its
ingress paths.
*/}}
{{- define "keyhouse.components" -}}
userKeyService:
  component: user-key-service
  grpcService: keyhouse.v1.UserKeyService
platformKeyService:
  component: platform-key-service
  grpcService: keyhouse.v1.PlatformKeyService
{{- end -}}

{{- define "keyhouse.chartLabel" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels shared by every resource. */}}
{{- define "keyhouse.labels" -}}
helm.sh/chart: {{ include "keyhouse.chartLabel" . }}
app.kubernetes.io/name: {{ include "keyhouse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyhouse
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of the whole release (both services). */}}
{{- define "keyhouse.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "keyhouse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component. Call with (list $ "component"). */}}
{{- define "keyhouse.selectorLabels" -}}
{{ include "keyhouse.releaseSelectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component. Call with (list $ "component"). */}}
{{- define "keyhouse.componentLabels" -}}
{{ include "keyhouse.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The image reference: repository[:tag][@digest]; the tag defaults to appVersion. */}}
{{- define "keyhouse.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "keyhouse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "keyhouse.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding DATABASE_URL and the encryption keys. */}}
{{- define "keyhouse.secretName" -}}
{{- if .Values.secret.existingSecret -}}
{{- .Values.secret.existingSecret -}}
{{- else -}}
{{- include "keyhouse.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* Whether the required secret settings are configured ("true" or ""). */}}
{{- define "keyhouse.secretConfigured" -}}
{{- if or .Values.secret.existingSecret (and .Values.secret.databaseUrl .Values.secret.encryptionKeys) -}}
true
{{- end -}}
{{- end -}}

{{/* The Secret holding the platform-key fallbacks, or "" when there is none. */}}
{{- define "keyhouse.providerKeysSecretName" -}}
{{- if .Values.providerKeys.existingSecret -}}
{{- .Values.providerKeys.existingSecret -}}
{{- else if .Values.providerKeys.values -}}
{{- include "keyhouse.suffixedName" (list . "provider-keys") -}}
{{- end -}}
{{- end -}}

{{/* KEYHOUSE_LISTEN: host:port, with brackets around an IPv6 host. */}}
{{- define "keyhouse.listen" -}}
{{- if contains ":" .Values.config.listenHost -}}
{{- printf "[%s]:%d" .Values.config.listenHost (int .Values.containerPort) -}}
{{- else -}}
{{- printf "%s:%d" .Values.config.listenHost (int .Values.containerPort) -}}
{{- end -}}
{{- end -}}

{{/* env entry reading DATABASE_URL from the secret. */}}
{{- define "keyhouse.env.databaseUrl" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "keyhouse.secretName" . }}
      key: {{ .Values.secret.keys.databaseUrl }}
{{- end -}}

{{/* Environment of a service container. Call with (list $ component-meta service-values). */}}
{{- define "keyhouse.serviceEnv" -}}
{{- $root := index . 0 -}}
{{- $meta := index . 1 -}}
{{- $svc := index . 2 -}}
{{- $v := $root.Values -}}
{{- $secretName := include "keyhouse.secretName" $root -}}
- name: KEYHOUSE_LISTEN
  value: {{ include "keyhouse.listen" $root | quote }}
{{ include "keyhouse.env.databaseUrl" $root }}
- name: KEYHOUSE_ENCRYPTION_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $v.secret.keys.encryptionKeys }}
{{- if or $v.secret.existingSecret $v.secret.serviceTokens }}
- name: KEYHOUSE_SERVICE_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $v.secret.keys.serviceTokens }}
      optional: {{ if $v.secret.existingSecret }}true{{ else }}false{{ end }}
{{- end }}
{{- if or $v.secret.existingSecret $v.secret.redisUrl }}
- name: KEYHOUSE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $v.secret.keys.redisUrl }}
      optional: {{ if $v.secret.existingSecret }}true{{ else }}false{{ end }}
{{- end }}
{{- if or $v.secret.existingSecret $v.secret.opsCenterSessionRedisUrl }}
- name: KEYHOUSE_OPS_CENTER_SESSION_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $v.secret.keys.opsCenterSessionRedisUrl }}
      optional: {{ if $v.secret.existingSecret }}true{{ else }}false{{ end }}
{{- end }}
{{- $oc := $v.config.opsCenter }}
{{- range $g := $oc.adminGroups }}
{{- if has $g $oc.userGroups }}
{{- fail (printf "config.opsCenter.userGroups: the group %q is in config.opsCenter.adminGroups too; name it in one" $g) }}
{{- end }}
{{- end }}
- name: KEYHOUSE_OPS_CENTER_SESSION_PREFIX
  value: {{ $oc.sessionPrefix | quote }}
{{- with $oc.adminGroups }}
- name: KEYHOUSE_OPS_CENTER_ADMIN_GROUPS
  value: {{ join "," . | quote }}
{{- end }}
{{- with $oc.userGroups }}
- name: KEYHOUSE_OPS_CENTER_USER_GROUPS
  value: {{ join "," . | quote }}
{{- end }}
- name: KEYHOUSE_LOG_FORMAT
  value: {{ $v.config.logFormat | quote }}
{{- with $v.config.logFilter }}
- name: KEYHOUSE_LOG
  value: {{ . | quote }}
{{- end }}
{{- with $v.config.corsOrigins }}
- name: KEYHOUSE_CORS_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
- name: KEYHOUSE_BCRYPT_COST
  value: {{ $v.config.bcryptCost | int | toString | quote }}
{{- if $v.config.secureCookies }}
- name: KEYHOUSE_SECURE_COOKIES
  value: "true"
{{- end }}
{{- if $v.config.allowNonExpiringKeys }}
- name: KEYHOUSE_ALLOW_NON_EXPIRING_KEYS
  value: "true"
{{- end }}
{{- with $v.config.scopes }}
- name: KEYHOUSE_SCOPES
  value: {{ join "," . | quote }}
{{- end }}
{{- with $v.config.extAuthz.keyHeader }}
- name: KEYHOUSE_EXT_AUTHZ_KEY_HEADER
  value: {{ . | quote }}
{{- end }}
{{- if $v.config.extAuthz.forwardKey }}
- name: KEYHOUSE_EXT_AUTHZ_FORWARD_KEY
  value: "true"
{{- end }}
{{- with $v.config.outboundAllowedNetworks }}
- name: KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS
  value: {{ join "," . | quote }}
{{- end }}
{{- with $v.config.oidc }}
{{- if .issuer }}
{{- if not .audience }}
{{- fail "config.oidc.audience is required with config.oidc.issuer: the \"aud\" of tokens meant for keyhouse" }}
{{- end }}
{{- if not (or .adminRoles .userRoles) }}
{{- fail "config.oidc.userRoles (or config.oidc.adminRoles) must name a role when config.oidc.issuer is set: otherwise no token gets access" }}
{{- end }}
- name: KEYHOUSE_OIDC_ISSUER
  value: {{ .issuer | quote }}
- name: KEYHOUSE_OIDC_AUDIENCE
  value: {{ .audience | quote }}
- name: KEYHOUSE_OIDC_ROLE_CLAIM
  value: {{ .roleClaim | quote }}
{{- with .adminRoles }}
- name: KEYHOUSE_OIDC_ADMIN_ROLES
  value: {{ join "," . | quote }}
{{- end }}
{{- with .userRoles }}
- name: KEYHOUSE_OIDC_USER_ROLES
  value: {{ join "," . | quote }}
{{- end }}
- name: KEYHOUSE_OIDC_JWKS_REFRESH_SECS
  value: {{ .jwksRefreshSecs | int | toString | quote }}
{{- if .clientId }}
{{- if not .redirectUrl }}
{{- fail "config.oidc.redirectUrl is required with config.oidc.clientId: keyhouse's /auth/callback as browsers reach it" }}
{{- end }}
- name: KEYHOUSE_OIDC_CLIENT_ID
  value: {{ .clientId | quote }}
- name: KEYHOUSE_OIDC_REDIRECT_URL
  value: {{ .redirectUrl | quote }}
{{- if or $v.secret.existingSecret $v.secret.oidcClientSecret }}
- name: KEYHOUSE_OIDC_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $v.secret.keys.oidcClientSecret }}
      optional: {{ if $v.secret.existingSecret }}true{{ else }}false{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (not .issuer) .clientId }}
{{- fail "config.oidc.clientId is set without config.oidc.issuer" }}
{{- end }}
{{- end }}
{{- with $v.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ default $meta.component $v.otel.serviceName | quote }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with $svc.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A gRPC probe. Call with (list $ probe-values grpc-service-name). */}}
{{- define "keyhouse.grpcProbe" -}}
{{- $root := index . 0 -}}
{{- $p := index . 1 -}}
{{- $service := index . 2 -}}
grpc:
  port: {{ $root.Values.containerPort }}
  service: {{ $service | quote }}
{{- range $k := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" "successThreshold" }}
{{- if hasKey $p $k }}
{{ $k }}: {{ index $p $k }}
{{- end }}
{{- end }}
{{- end -}}
