{{/*
Expand the name of the chart.
*/}}
{{- define "klein-edit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (63 chars max, DNS label).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "klein-edit.fullname" -}}
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

{{/*
Chart name and version as used by the chart label.
*/}}
{{- define "klein-edit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "klein-edit.labels" -}}
helm.sh/chart: {{ include "klein-edit.chart" . }}
{{ include "klein-edit.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end }}

{{/*
Pod template labels: the common labels without helm.sh/chart, so that a chart-only version bump does
not change the pod template and restart every GPU pod (each restart reloads the model).
*/}}
{{- define "klein-edit.podLabels" -}}
{{ include "klein-edit.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/component: worker
{{- end }}

{{/*
Selector labels
*/}}
{{- define "klein-edit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "klein-edit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the service account to use
*/}}
{{- define "klein-edit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "klein-edit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference (digest wins over tag).
*/}}
{{- define "klein-edit.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the model-cache claim.
*/}}
{{- define "klein-edit.modelClaimName" -}}
{{- .Values.modelCache.pvc.existingClaim | default (printf "%s-models" (include "klein-edit.fullname" .)) }}
{{- end }}

{{/*
The effective worker config: .Values.config plus the chart-managed defaults (cache_dir under the
model volume). Returned as JSON; use `include ... | fromJson`.
Fails on settings that must come from a Secret, on a missing drain grace or HTTP port, and on a
cache_dir outside the model volume.
*/}}
{{- define "klein-edit.effectiveConfig" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- range $section := list "kafka" "s3" "pipeline" "provenance" "cost" "worker" "log" }}
{{- if not (hasKey $cfg $section) }}{{- $_ := set $cfg $section dict }}{{- end }}
{{- end }}
{{- range $path := list "kafka.sasl_password" "kafka.oauth_client_secret" "s3.access_key_id" "s3.secret_access_key" "pipeline.hf_token" "provenance.signing_key" }}
{{- $parts := splitList "." $path }}
{{- if hasKey (index $cfg (first $parts)) (last $parts) }}
{{- fail (printf "config.%s is a secret: put it in the Secret named by secrets.existingSecret, not in values" $path) }}
{{- end }}
{{- end }}
{{- $mount := .Values.modelCache.mountPath | trimSuffix "/" }}
{{- $cacheDir := get $cfg.pipeline "cache_dir" }}
{{- if $cacheDir }}
{{- if not (hasPrefix (printf "%s/" $mount) (printf "%s/" $cacheDir)) }}
{{- fail (printf "config.pipeline.cache_dir (%s) must be on the model volume (modelCache.mountPath %s): the root filesystem is read-only" $cacheDir $mount) }}
{{- end }}
{{- else }}
{{- $_ := set $cfg.pipeline "cache_dir" (printf "%s/hub" $mount) }}
{{- end }}
{{- if .Values.signing.secretName }}
{{- range $field := list "signing_key_file" "certificate_chain_file" "certificate_chain" }}
{{- if hasKey $cfg.provenance $field }}
{{- fail (printf "config.provenance.%s is set by the chart from signing.secretName: leave it out" $field) }}
{{- end }}
{{- end }}
{{- $dir := .Values.signing.mountPath | trimSuffix "/" }}
{{- $_ := set $cfg.provenance "signing_key_file" (printf "%s/%s" $dir .Values.signing.key) }}
{{- $_ := set $cfg.provenance "certificate_chain_file" (printf "%s/%s" $dir .Values.signing.certificateChain) }}
{{- end }}
{{- if or (not (hasKey $cfg.worker "drain_grace_s")) (kindIs "invalid" (get $cfg.worker "drain_grace_s")) }}
{{- fail "config.worker.drain_grace_s is required: terminationGracePeriodSeconds is derived from it" }}
{{- end }}
{{- if or (not (hasKey $cfg.worker "http_port")) (kindIs "invalid" (get $cfg.worker "http_port")) }}
{{- fail "config.worker.http_port is required: the probes and /metrics use it" }}
{{- end }}
{{- if and (eq (get $cfg.kafka "sasl_mechanism" | default "") "OAUTHBEARER") (ne (get $cfg.kafka "oauth_provider" | default "oidc") "aws_msk_iam") }}
{{- if or (not .Values.secrets.existingSecret) (not .Values.secrets.keys.kafkaOauthClientSecret) }}
{{- fail "config.kafka.sasl_mechanism OAUTHBEARER with oauth_provider oidc needs the client secret: set secrets.existingSecret and secrets.keys.kafkaOauthClientSecret" }}
{{- end }}
{{- end }}
{{- toJson $cfg }}
{{- end }}

{{/*
Render the config (section -> field -> value) as KLEIN_EDIT_* env vars: KLEIN_EDIT_<SECTION>__<FIELD>,
upper-cased. Strings verbatim; numbers, booleans, lists and maps (a map-valued field, e.g.
kafka.oauth_extensions, whose keys are case-sensitive) as JSON; null leaves are skipped.
Args: dict "prefix" "KLEIN_EDIT_" "map" $cfg "sections" true
*/}}
{{- define "klein-edit.envFromMap" -}}
{{- $prefix := .prefix }}
{{- $sections := .sections }}
{{- range $key, $value := .map }}
{{- $name := printf "%s%s" $prefix (upper $key) }}
{{- if and $sections (kindIs "map" $value) }}
{{- include "klein-edit.envFromMap" (dict "prefix" (printf "%s__" $name) "map" $value "sections" false) }}
{{- else if not (kindIs "invalid" $value) }}
- name: {{ $name }}
  value: {{ ternary $value (toJson $value) (kindIs "string" $value) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The worker's KLEIN_EDIT_* settings env (from the effective config).
*/}}
{{- define "klein-edit.configEnv" -}}
{{- include "klein-edit.envFromMap" (dict "prefix" "KLEIN_EDIT_" "map" (include "klein-edit.effectiveConfig" . | fromJson) "sections" true) }}
{{- end }}

{{/*
Environment shared by the worker and the fetch-model init container: HOME and caches on writable
volumes, the Hugging Face cache on the model volume.
*/}}
{{- define "klein-edit.runtimeEnv" -}}
{{- $mount := .Values.modelCache.mountPath | trimSuffix "/" }}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: HF_HOME
  value: {{ $mount | quote }}
{{- if .Values.compileCache.onModelVolume }}
- name: TORCHINDUCTOR_CACHE_DIR
  value: {{ printf "%s/torch-compile/inductor" $mount | quote }}
- name: TRITON_CACHE_DIR
  value: {{ printf "%s/torch-compile/triton" $mount | quote }}
{{- else }}
- name: TORCHINDUCTOR_CACHE_DIR
  value: /tmp/torch-compile/inductor
- name: TRITON_CACHE_DIR
  value: /tmp/torch-compile/triton
{{- end }}
{{- end }}

{{/*
One secretKeyRef env var. Args: dict "name" ENV "key" SECRETKEY "root" $
*/}}
{{- define "klein-edit.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.secrets.existingSecret | quote }}
      key: {{ .key | quote }}
      {{- if .root.Values.secrets.optional }}
      optional: true
      {{- end }}
{{- end }}

{{/*
Secret env of the worker container (Kafka SASL, S3 keys).
*/}}
{{- define "klein-edit.workerSecretEnv" -}}
{{- if .Values.secrets.existingSecret }}
{{- $keys := .Values.secrets.keys }}
{{- if $keys.kafkaSaslUsername }}
{{ include "klein-edit.secretEnv" (dict "name" "KLEIN_EDIT_KAFKA__SASL_USERNAME" "key" $keys.kafkaSaslUsername "root" .) }}
{{- end }}
{{- if $keys.kafkaSaslPassword }}
{{ include "klein-edit.secretEnv" (dict "name" "KLEIN_EDIT_KAFKA__SASL_PASSWORD" "key" $keys.kafkaSaslPassword "root" .) }}
{{- end }}
{{- if $keys.kafkaOauthClientSecret }}
{{ include "klein-edit.secretEnv" (dict "name" "KLEIN_EDIT_KAFKA__OAUTH_CLIENT_SECRET" "key" $keys.kafkaOauthClientSecret "root" .) }}
{{- end }}
{{- if $keys.s3AccessKeyId }}
{{ include "klein-edit.secretEnv" (dict "name" "KLEIN_EDIT_S3__ACCESS_KEY_ID" "key" $keys.s3AccessKeyId "root" .) }}
{{- end }}
{{- if $keys.s3SecretAccessKey }}
{{ include "klein-edit.secretEnv" (dict "name" "KLEIN_EDIT_S3__SECRET_ACCESS_KEY" "key" $keys.s3SecretAccessKey "root" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Names of environment variables that carry secrets: never set with a plain value.
*/}}
{{- define "klein-edit.secretEnvNames" -}}
{{- list "KLEIN_EDIT_KAFKA__SASL_PASSWORD" "KLEIN_EDIT_KAFKA__OAUTH_CLIENT_SECRET" "KLEIN_EDIT_S3__ACCESS_KEY_ID" "KLEIN_EDIT_S3__SECRET_ACCESS_KEY" "KLEIN_EDIT_PIPELINE__HF_TOKEN" "KLEIN_EDIT_PROVENANCE__SIGNING_KEY" "HF_TOKEN" "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "AWS_SESSION_TOKEN" | toJson }}
{{- end }}

{{/*
The worker container's full env list (validated): settings, runtime, secrets, then extraEnv.
Fails when extraEnv repeats a chart-rendered name or sets a secret variable with a plain value.
*/}}
{{- define "klein-edit.workerEnv" -}}
{{- $base := printf "%s\n%s\n%s" (include "klein-edit.configEnv" .) (include "klein-edit.runtimeEnv" .) (include "klein-edit.workerSecretEnv" .) }}
{{- if .Values.modelCache.offline }}
{{- $base = printf "%s\n- name: HF_HUB_OFFLINE\n  value: \"1\"" $base }}
{{- end }}
{{- if .Values.staticMembership.enabled }}
{{- $base = printf "%s\n- name: KLEIN_EDIT_KAFKA__GROUP_INSTANCE_ID\n  valueFrom:\n    fieldRef:\n      fieldPath: metadata.name" $base }}
{{- end }}
{{- $env := $base | fromYamlArray }}
{{- $names := list }}
{{- range $env }}{{- $names = append $names .name }}{{- end }}
{{- $secretNames := include "klein-edit.secretEnvNames" . | fromJsonArray }}
{{- range .Values.extraEnv }}
{{- if has .name $names }}
{{- fail (printf "extraEnv sets %s, which the chart already renders: set it through config (or the value the chart derives it from)" .name) }}
{{- end }}
{{- if and (has .name $secretNames) (hasKey . "value") }}
{{- fail (printf "extraEnv sets the secret %s as a plain value: use valueFrom.secretKeyRef or secrets.existingSecret" .name) }}
{{- end }}
{{- end }}
{{- concat $env (.Values.extraEnv | default list) | toYaml }}
{{- end }}

{{/*
Drain grace (seconds, rounded up) and the pod's terminationGracePeriodSeconds.
*/}}
{{- define "klein-edit.drainGraceSeconds" -}}
{{- $cfg := include "klein-edit.effectiveConfig" . | fromJson }}
{{- ceil (float64 $cfg.worker.drain_grace_s) | int }}
{{- end }}

{{- define "klein-edit.terminationGracePeriodSeconds" -}}
{{- $drain := include "klein-edit.drainGraceSeconds" . | int }}
{{- $explicit := .Values.shutdown.terminationGracePeriodSeconds }}
{{- if not (kindIs "invalid" $explicit) }}
{{- if lt (int $explicit) (add $drain 10) }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must be >= config.worker.drain_grace_s (%d) + 10: the pod would be killed while the worker is still draining" (int $explicit) $drain) }}
{{- end }}
{{- int $explicit }}
{{- else }}
{{- if lt (int .Values.shutdown.marginSeconds) 10 }}
{{- fail "shutdown.marginSeconds must be >= 10 (commit, leave the group, exit)" }}
{{- end }}
{{- add $drain (int .Values.shutdown.marginSeconds) }}
{{- end }}
{{- end }}

{{/*
The request topics the workers consume, most urgent first.
*/}}
{{- define "klein-edit.requestTopics" -}}
{{- $cfg := include "klein-edit.effectiveConfig" . | fromJson }}
{{- $topics := concat ($cfg.kafka.priority_topics | default list) (list ($cfg.kafka.request_topic | default "edit.requests")) }}
{{- toJson $topics }}
{{- end }}
