{{/* Names, labels and the pieces every Herald pod shares. */}}

{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name, at most 45 characters so that "-<component>-metrics" still fits in 63. */}}
{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "herald.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "sender"). */}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "herald.componentLabels" -}}
{{ include "herald.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "herald.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where the pods mount the configuration and the certificates. */}}
{{- define "herald.configPath" -}}/etc/herald/config/herald.yaml{{- end -}}
{{- define "herald.kafkaCaPath" -}}/etc/herald/kafka-ca/ca.crt{{- end -}}
{{- define "herald.kafkaClientDir" -}}/etc/herald/kafka-client{{- end -}}
{{- define "herald.webhookCaPath" -}}/etc/herald/webhook-ca/ca.crt{{- end -}}

{{/* librdkafka's security.protocol for the TLS and SASL values. */}}
{{- define "herald.securityProtocol" -}}
{{- $kafka := .Values.kafka -}}
{{- if and $kafka.tls.enabled $kafka.sasl.enabled -}}SASL_SSL
{{- else if $kafka.tls.enabled -}}SSL
{{- else if $kafka.sasl.enabled -}}SASL_PLAINTEXT
{{- else -}}PLAINTEXT
{{- end -}}
{{- end -}}

{{/*
Herald's configuration file: the `config` values with the keys the chart owns added. Secrets stay
out of it; they reach the pods as environment variables from existing Secrets.
*/}}
{{- define "herald.configFile" -}}
{{- $config := deepCopy .Values.config -}}
{{- $kafka := deepCopy (default dict (get $config "kafka")) -}}
{{- $_ := set $kafka "bootstrap_servers" .Values.kafka.bootstrapServers -}}
{{- $client := deepCopy .Values.kafka.client -}}
{{- $_ := set $client "security.protocol" (include "herald.securityProtocol" .) -}}
{{- if .Values.kafka.sasl.enabled -}}
{{- $_ := set $client "sasl.mechanism" .Values.kafka.sasl.mechanism -}}
{{- end -}}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caSecret.name -}}
{{- $_ := set $client "ssl.ca.location" (include "herald.kafkaCaPath" .) -}}
{{- end -}}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.clientCertSecret.name -}}
{{- $_ := set $client "ssl.certificate.location" (printf "%s/tls.crt" (include "herald.kafkaClientDir" .)) -}}
{{- $_ := set $client "ssl.key.location" (printf "%s/tls.key" (include "herald.kafkaClientDir" .)) -}}
{{- end -}}
{{- $_ := set $kafka "client" $client -}}
{{- with .Values.kafka.consumer }}{{ $_ := set $kafka "consumer" . }}{{ end -}}
{{- with .Values.kafka.producer }}{{ $_ := set $kafka "producer" . }}{{ end -}}
{{- $_ := set $config "kafka" $kafka -}}
{{- $telemetry := deepCopy (default dict (get $config "telemetry")) -}}
{{- $_ := set $telemetry "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port)) -}}
{{- $_ := set $config "telemetry" $telemetry -}}
{{- $admin := deepCopy (default dict (get $config "admin")) -}}
{{- $_ := set $admin "listen" (printf "0.0.0.0:%d" (int .Values.admin.port)) -}}
{{- $_ := set $config "admin" $admin -}}
{{- if .Values.sender.extraCaSecret.name -}}
{{- $sender := deepCopy (default dict (get $config "sender")) -}}
{{- $_ := set $sender "extra_ca_file" (include "herald.webhookCaPath" .) -}}
{{- $_ := set $config "sender" $sender -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The ConfigMap data shared by the services' ConfigMap and the topics hook's copy. */}}
{{- define "herald.configData" -}}
herald.yaml: |
  # Written by the Herald chart from its values; docs/configuration.md describes each key.
{{ include "herald.configFile" . | indent 2 }}
{{- end -}}

{{/* Environment of every Herald container: the configuration file and the Kafka credentials. */}}
{{- define "herald.kafkaEnv" -}}
- name: HERALD_CONFIG
  value: {{ include "herald.configPath" . }}
{{- $sasl := .Values.kafka.sasl }}
{{- if $sasl.enabled }}
- name: HERALD__KAFKA__CLIENT__SASL_USERNAME
{{- if $sasl.usernameKey }}
  valueFrom:
    secretKeyRef:
      name: {{ $sasl.existingSecret }}
      key: {{ $sasl.usernameKey }}
{{- else }}
  value: {{ $sasl.username | quote }}
{{- end }}
- name: HERALD__KAFKA__CLIENT__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $sasl.existingSecret }}
      key: {{ $sasl.passwordKey }}
{{- end }}
{{- end -}}

{{- define "herald.encryptionKeysEnv" -}}
- name: HERALD__ENCRYPTION__KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.encryptionKeys.name }}
      key: {{ .Values.secrets.encryptionKeys.key }}
{{- end -}}

{{/* The pod name as group.instance.id, for static group membership. */}}
{{- define "herald.groupInstanceEnv" -}}
{{- if .Values.kafka.staticMembership.enabled }}
- name: HERALD__KAFKA__GROUP_INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- end -}}

{{- define "herald.volumeMounts" -}}
- name: config
  mountPath: {{ dir (include "herald.configPath" .) }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  mountPath: {{ dir (include "herald.kafkaCaPath" .) }}
  readOnly: true
{{- end }}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.clientCertSecret.name }}
- name: kafka-client
  mountPath: {{ include "herald.kafkaClientDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes of every Herald pod; call with (dict "root" $ "configMap" NAME). */}}
{{- define "herald.volumes" -}}
{{- $values := .root.Values -}}
- name: config
  configMap:
    name: {{ .configMap }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if and $values.kafka.tls.enabled $values.kafka.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ $values.kafka.tls.caSecret.name }}
    items:
      - key: {{ $values.kafka.tls.caSecret.key }}
        path: ca.crt
{{- end }}
{{- if and $values.kafka.tls.enabled $values.kafka.tls.clientCertSecret.name }}
- name: kafka-client
  secret:
    secretName: {{ $values.kafka.tls.clientCertSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ $values.kafka.tls.clientCertSecret.certKey }}
        path: tls.crt
      - key: {{ $values.kafka.tls.clientCertSecret.keyKey }}
        path: tls.key
{{- end }}
{{- end -}}

{{/* Scheduling settings of one component's pods; call with (dict "root" $ "component" NAME "values" VALUES). */}}
{{- define "herald.scheduling" -}}
{{- $root := .root -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ $root.Values.topologySpread.maxSkew }}
    topologyKey: {{ $root.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "herald.selectorLabels" (dict "root" $root "component" .component) | nindent 8 }}
{{- end }}
{{- end -}}

{{/*
Fails unless the pod's grace period leaves 10 s beyond Herald's own shutdown timeout: Herald may
take 5 s more to close its Kafka clients and flush telemetry before it exits by itself, and 5 s
are a margin. Kubernetes sends SIGKILL when the grace period ends. Call with (dict "component" "sender" "grace" SECONDS "timeoutMs" MILLISECONDS).
*/}}
{{- define "herald.checkGracePeriod" -}}
{{- $needed := add (div (add (int64 .timeoutMs) 999) 1000) 10 -}}
{{- if lt (int64 .grace) $needed -}}
{{- fail (printf "%s.terminationGracePeriodSeconds is %d, but config.%s.shutdown_timeout_ms is %d: the grace period must be at least %d s (the shutdown timeout, up to 5 s for closing the Kafka clients, and 5 s of margin), or Kubernetes kills the pod before Herald has stored its progress" .component (int64 .grace) .component (int64 .timeoutMs) $needed) -}}
{{- end -}}
{{- end -}}
