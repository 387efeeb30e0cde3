{{/* Checks across values that the schema cannot express; each failure names the values to change. */}}
{{- define "herald.checkValues" -}}
{{- $kafka := .Values.kafka -}}
{{- if and $kafka.sasl.enabled (not $kafka.sasl.username) (not $kafka.sasl.usernameKey) -}}
{{- fail "kafka.sasl: set username, or usernameKey to read the user name from kafka.sasl.existingSecret" -}}
{{- end -}}
{{- if and $kafka.sasl.username $kafka.sasl.usernameKey -}}
{{- fail "kafka.sasl: set either username or usernameKey, not both" -}}
{{- end -}}
{{- if and (not $kafka.tls.enabled) (or $kafka.tls.caSecret.name $kafka.tls.clientCertSecret.name) -}}
{{- fail "kafka.tls.caSecret or kafka.tls.clientCertSecret is set, but kafka.tls.enabled is false" -}}
{{- end -}}
{{- range $settings := list "client" "consumer" "producer" -}}
{{- range $key := list "security.protocol" "sasl.mechanism" "sasl.username" "sasl.password" "ssl.ca.location" "ssl.certificate.location" "ssl.key.location" -}}
{{- if hasKey (index $kafka $settings) $key -}}
{{- fail (printf "kafka.%s.%s: the chart sets it from kafka.tls and kafka.sasl, which keep passwords in Secrets and mount certificates; set those values instead" $settings $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (not $kafka.sasl.enabled) (or $kafka.sasl.username $kafka.sasl.usernameKey $kafka.sasl.existingSecret) -}}
{{- fail "kafka.sasl.username, usernameKey or existingSecret is set, but kafka.sasl.enabled is false" -}}
{{- end -}}
{{- if and .Values.sender.autoscaling.enabled (not (kindIs "invalid" .Values.sender.replicas)) -}}
{{- fail (printf "sender.replicas is %v, but sender.autoscaling.enabled is true, which sets the replica count: set sender.autoscaling.minReplicas and maxReplicas instead, or set sender.autoscaling.enabled=false" .Values.sender.replicas) -}}
{{- end -}}
{{- if and .Values.sender.autoscaling.keda.enabled (not .Values.sender.autoscaling.enabled) -}}
{{- fail "sender.autoscaling.keda.enabled needs sender.autoscaling.enabled: KEDA takes minReplicas, maxReplicas and the CPU target from there" -}}
{{- end -}}
{{- end -}}
