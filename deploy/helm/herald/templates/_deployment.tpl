{{/*
One Herald Deployment. Call with a dict of:
  root           the chart's root context
  component      router, sender or admin: the subcommand and the name suffix
  values         the component's values
  autoscaled     true when a HorizontalPodAutoscaler or KEDA owns the replica count
  singleProcess  true to stop the old pods before starting new ones on an update
  ports          the container ports, as YAML
  env            the component's own environment variables, as YAML
  probes         the probes, as YAML
  mounts         extra volume mounts, as YAML
  volumes        extra volumes, as YAML
*/}}
{{- define "herald.deployment" -}}
{{- $root := .root -}}
{{- $values := .values -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "herald.fullname" $root }}-{{ .component }}
  labels:
    {{- include "herald.componentLabels" . | nindent 4 }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ if kindIs "invalid" $values.replicas }}2{{ else }}{{ $values.replicas }}{{ end }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "herald.selectorLabels" . | nindent 6 }}
  strategy:
    {{- if .singleProcess }}
    # Kubernetes stops every old pod before it starts a new one, so two processes never overlap.
    type: Recreate
    {{- else }}
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "herald.componentLabels" . | nindent 8 }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Rolls the pods when the configuration changes.
        checksum/config: {{ include "herald.configData" $root | sha256sum }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "herald.serviceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with (include "herald.scheduling" . | trim) }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "herald.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: [{{ .component | quote }}]
          ports:
            {{- .ports | nindent 12 }}
          env:
            {{- include "herald.kafkaEnv" $root | nindent 12 }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- .probes | nindent 10 }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "herald.volumeMounts" $root | nindent 12 }}
            {{- with .mounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "herald.volumes" (dict "root" $root "configMap" (include "herald.fullname" $root)) | nindent 8 }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/* An HTTP probe; call with (dict "path" "/readyz" "port" "metrics" "timing" VALUES). */}}
{{- define "herald.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{- with .timing }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "herald.metricsPorts" -}}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end -}}

{{/* Liveness on /healthz and readiness on /readyz of the telemetry listener. */}}
{{- define "herald.telemetryProbes" -}}
livenessProbe:
  {{- include "herald.httpProbe" (dict "path" "/healthz" "port" "metrics" "timing" .liveness) | nindent 2 }}
readinessProbe:
  {{- include "herald.httpProbe" (dict "path" "/readyz" "port" "metrics" "timing" .readiness) | nindent 2 }}
{{- end -}}

{{/* The router's and the sender's own variables: the encryption keys and the group instance id. */}}
{{- define "herald.consumerEnv" -}}
{{ include "herald.encryptionKeysEnv" . }}
{{- include "herald.groupInstanceEnv" . }}
{{- end -}}

{{- define "herald.adminTokensEnv" -}}
- name: HERALD__ADMIN__TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.adminTokens.name }}
      key: {{ .Values.secrets.adminTokens.key }}
{{- end -}}
