{{/* The release's full name: <release>-runner-driver, or the release name when it already says runner-driver. */}}
{{- define "rd.fullname" -}}
{{- if contains "runner-driver" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-runner-driver" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rd.selectorLabels" -}}
app.kubernetes.io/name: runner-driver
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object the chart makes. (Job pods carry app.kubernetes.io/managed-by=runner-driver, set by the driver; these say Helm.) */}}
{{- define "rd.labels" -}}
{{ include "rd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "rd.jobNamespace" -}}
{{- default .Release.Namespace .Values.jobNamespace.name -}}
{{- end -}}

{{- define "rd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rd.secretName" -}}
{{- default (include "rd.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "rd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Memory sized from the footprint: 64Mi + 10Mi per concurrent job (request), twice that (limit). */}}
{{- define "rd.resources" -}}
{{- if .Values.resources -}}
{{ toYaml .Values.resources }}
{{- else -}}
{{- $mi := add 64 (mul 10 (int .Values.concurrent)) -}}
requests:
  cpu: 100m
  memory: {{ printf "%dMi" $mi }}
limits:
  memory: {{ printf "%dMi" (mul 2 $mi) }}
{{- end -}}
{{- end -}}

{{/*
One TOML value: strings as JSON strings (valid TOML basic strings), whole numbers as
integers (Helm reads every number as a float), lists as arrays.
*/}}
{{- define "rd.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- printf "%t" $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 $v) (floor $v) -}}{{ printf "%d" (int64 $v) }}{{- else -}}{{ printf "%v" $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- printf "%d" $v -}}
{{- else if kindIs "slice" $v -}}
{{- $items := list -}}
{{- range $v -}}{{- $items = append $items (include "rd.tomlValue" .) -}}{{- end -}}
[{{ join ", " $items }}]
{{- else -}}
{{- fail (printf "driver.settings: cannot write %v (%s) as TOML" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/*
A TOML table: (dict "name" "overrides" "table" $map). Plain keys first, then sub-tables
as [name.sub]; null values are left out, so the driver's default applies.
*/}}
{{- define "rd.tomlTable" -}}
{{- $name := .name -}}
{{- $table := .table -}}
[{{ $name }}]
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if and (not (kindIs "map" $value)) (not (kindIs "invalid" $value)) }}
{{ $key }} = {{ include "rd.tomlValue" $value }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if kindIs "map" $value }}

{{ include "rd.tomlTable" (dict "name" (printf "%s.%s" $name $key) "table" $value) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The driver's settings with the keys the chart owns filled in. */}}
{{- define "rd.driverSettings" -}}
{{- $s := deepCopy (default dict .Values.driver.settings) -}}
{{- $k8s := default dict (get $s "kubernetes") -}}
{{- $_ := set $k8s "namespace" (include "rd.jobNamespace" .) -}}
{{- $_ := set $s "kubernetes" $k8s -}}
{{- $manager := default dict (get $s "manager") -}}
{{- if not (get $manager "id") -}}{{- $_ := set $manager "id" (include "rd.fullname" .) -}}{{- end -}}
{{- $_ := set $s "manager" $manager -}}
{{- $pod := default dict (get $s "pod") -}}
{{- if not (hasKey $pod "builds_dir") -}}{{- $_ := set $pod "builds_dir" .Values.runner.buildsDir -}}{{- end -}}
{{- if not (hasKey $pod "cache_dir") -}}{{- $_ := set $pod "cache_dir" .Values.runner.cacheDir -}}{{- end -}}
{{- range $key, $runnerKey := dict "builds_dir" "buildsDir" "cache_dir" "cacheDir" -}}
{{- if ne (toString (get $pod $key)) (toString (get $.Values.runner $runnerKey)) -}}
{{- fail (printf "driver.settings.pod.%s (%v) must equal runner.%s (%v): the runner and the job pod must agree on it" $key (get $pod $key) $runnerKey (get $.Values.runner $runnerKey)) -}}
{{- end -}}
{{- end -}}
{{- if .Values.driver.podTemplate -}}{{- $_ := set $pod "template" "pod-template.yaml" -}}{{- end -}}
{{- if .Values.driver.podPatch -}}{{- $_ := set $pod "patch" "pod-patch.yaml" -}}{{- end -}}
{{- $_ := set $s "pod" $pod -}}
{{- if .Values.driver.caBundle -}}
{{- $tls := default dict (get $s "tls") -}}
{{- $_ := set $tls "ca_file" "ca.crt" -}}
{{- $_ := set $s "tls" $tls -}}
{{- end -}}
{{- toJson $s -}}
{{- end -}}

{{/* The driver's settings file. */}}
{{- define "rd.driverToml" -}}
# runner-driver settings, rendered by the chart from driver.settings (see config.example.toml).
{{- $s := include "rd.driverSettings" . | fromJson }}
{{- range $section := keys $s | sortAlpha }}

{{ include "rd.tomlTable" (dict "name" $section "table" (get $s $section)) }}
{{- end }}
{{- end -}}

{{/*
The preflight container (`runner-driver check`), for the init container and the
`helm test` hook: the driver's settings, the release's service account, nothing else.
*/}}
{{- define "rd.preflightContainer" -}}
image: {{ include "rd.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command: ["runner-driver", "check"]
env:
  - name: RUNNER_DRIVER_CONFIG
    value: /etc/runner-driver/config.toml
resources:
  requests:
    cpu: 50m
    memory: 96Mi
  limits:
    memory: 192Mi
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: driver-config
    mountPath: /etc/runner-driver
    readOnly: true
  - name: tmp
    mountPath: /tmp
{{- end }}
