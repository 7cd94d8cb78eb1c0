#!/usr/bin/env bash
# GPU end to end: our own air-gapped deploy serves gpt-oss-20b with REAL vLLM 0.26.0 on an
# NVIDIA H100/H200 machine without network or systemd, and the doctor judges the live box and
# its real logs; then the box is broken in four ways the failure catalog names and the doctor
# must name each, from the box and from the real log.
#
# Run from the repo root, as root, on the GPU machine:
#     OUT=/some/dir WHEELHOUSE=/tmp/wheelhouse TOOLS=.gpu/tools EXTRA=/tmp/gpu/extra bash tests/gpu/run_e2e.sh
#   WHEELHOUSE  vLLM 0.26.0 for cp312 and the packages the image lacks (see
#               /work/shared/notes/gpu-vllm-facts.md), flat *.whl
#   TOOLS       pyinfra 3.10 + deps and uv 0.13.9 wheels (cp312)
#   EXTRA       hatchling (+deps, to build the doctor wheel offline), the doctor's deps
#               (packaging, rich, markdown-it-py, mdurl, pygments), jinja2, python-dateutil, ...
#   BASE_PYTHON the image's interpreter holding torch 2.11.0+cu130 (default /opt/torch/.venv/bin/python3)
# With the device tool, the wheelhouse travels as three xz parts (tests/gpu/README.md).
#
# Steps (each timed; everything is tee'd to $OUT/e2e.log, results in $OUT/results.json and the
# raw material for tests/fixtures/gpu/ in $OUT/fixtures.tar.gz):
#  1. a controller venv with pyinfra from the carried wheels, offline;
#  2. `pyinfra tests/gpu/local_inventory.py deploys/gptoss.py`: stack venv on the image's torch
#     (gptoss_base_python), exactly the wheelhouse (--no-deps), gptoss-supervise (no systemd),
#     model folder with gpt-oss-20b's config.json, --load-format dummy --skip-tokenizer-init
#     --enforce-eager (CUDA graph capture with a cold Triton cache took over 290 s here);
#     the deploy's own health gate (/health, /v1/models, a completion from token ids) and doctor gate;
#  3. gptoss-doctor, --deep, collect (the snapshot), logs on the real startup log;
#  4. breaks: a pytorch-triton dist-info owning triton/ (duplicate-triton), VLLM_ATTENTION_BACKEND
#     in the env file (stale-vllm-env), --attention-backend TRITON_ATTN_VLLM_V1 (deployed), and
#     --gpu-memory-utilization 0.05 (deployed); after each, the doctor on the box and on the log;
#  5. if time is left: the healthy deploy again, warm caches, for time-to-ready with caches;
#  6. (PHASES=...,carried) the caches packed as gptoss_jit_cache wants them, wiped, and brought
#     back by the deploy: time to ready on a box that never compiled a kernel but got the archive.
#
# PHASES=cold,breaks (the default) runs it all. The device tool limits one call to 10 minutes
# and keeps the machine (and the service, which gptoss-supervise detaches) for 30 s after a
# call, so a run there is two calls: PHASES=cold (steps 0-3) then PHASES=breaks (steps 4-5);
# the second reuses what the first left under /tmp/gptoss-e2e. Each call packs what exists so far.
set -u
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$(pwd)
OUT=${OUT:?set OUT to the output directory}
WHEELHOUSE=${WHEELHOUSE:-/tmp/wheelhouse}
TOOLS=${TOOLS:-.gpu/tools}
case $TOOLS in /*) ;; *) TOOLS=$REPO/$TOOLS ;; esac
EXTRA=${EXTRA:-/tmp/gpu/extra}
BASE_PYTHON=${BASE_PYTHON:-/opt/torch/.venv/bin/python3}
CONTROLLER_PYTHON=${CONTROLLER_PYTHON:-$BASE_PYTHON}  # pyinfra's interpreter (any 3.12 for the cp312 tools)
BUDGET_S=${BUDGET_S:-540}  # stop starting new steps after this (counted from this call's start)
PHASES=${PHASES:-cold,breaks}
has_phase() { case ",$PHASES," in *",$1,"*) return 0;; esac; return 1; }
WORK=/tmp/gptoss-e2e
FIX=$WORK/fixtures
MODEL=/srv/gptoss-models/gpt-oss-20b
LOG=/var/log/gptoss/gptoss-vllm.log
SUP=/opt/gptoss/bin/gptoss-supervise
T0=$(date +%s)
has_phase cold && rm -rf "$FIX" "$WORK/upgrade-stack-names"
mkdir -p "$OUT" "$WORK" "$FIX"
exec > >(tee -a "$OUT/e2e.log") 2>&1

el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[e2e +$(el)s] $*"; }
RESULTS=$WORK/results.jsonl
has_phase cold && : > "$RESULTS"
result() { printf '%s\n' "$1" >> "$RESULTS"; }  # one JSON object per line

say "phases: $PHASES"
say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1); init: $(ps -p 1 -o comm= 2>/dev/null)"
say "base python: $($BASE_PYTHON -c 'import sys; print(sys.version.split()[0])') torch/version.py: $(grep -h '^__version__' $($BASE_PYTHON -c 'import os, importlib.util as u; print(os.path.dirname(u.find_spec("torch").origin))')/version.py)"

# -- 0. inputs that belong to the box ------------------------------------------------------
KEY_FILE=$WORK/api-key
if has_phase cold; then
cp "$EXTRA"/packaging-*.whl "$EXTRA"/rich-*.whl "$EXTRA"/markdown_it_py-*.whl "$EXTRA"/mdurl-*.whl \
   "$EXTRA"/pygments-*.whl "$WHEELHOUSE"/  # the doctor's venv installs from the wheelhouse too
mkdir -p "$MODEL" && cp tests/fixtures/gpu/gpt-oss-20b/config.json "$MODEL"/ && chmod -R a+rX /srv/gptoss-models
(umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$KEY_FILE")
# The service runs as the unprivileged user: it must reach the image's interpreter and torch.
$BASE_PYTHON - <<'EOF'
import os, stat, sys, importlib.util
for target in (os.path.realpath(sys.executable), os.path.dirname(importlib.util.find_spec("torch").origin)):
    d = target if os.path.isdir(target) else os.path.dirname(target)
    while d != "/":
        if not os.stat(d).st_mode & stat.S_IXOTH:
            print(f"[e2e] {d} is not traversable by other users; chmod o+x (the service user needs {target})")
            os.chmod(d, os.stat(d).st_mode | stat.S_IXOTH)
        d = os.path.dirname(d)
EOF
ls -l /dev/nvidia* 2>/dev/null | head -4
fi
KEY=$(cat "$KEY_FILE") || { say "FAILED: no API key file (run PHASES=cold first)"; exit 1; }
CUDA_HOME_KEY=auto
if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME_KEY=system; fi
say "CUDA_HOME choice: $CUDA_HOME_KEY ($(/usr/local/cuda/bin/nvcc --version 2>/dev/null | grep release))"

# -- 1. controller venv, offline (CONTROLLER_VENV: use that one instead, for a rehearsal) ----
# The offline uv settings are for the controller's own installs only: the deploy's commands on
# the host must work without them (it passes its own --offline --no-index --find-links).
PORT=${GPTOSS_E2E_PORT:-8000}
OFFLINE=(env UV_OFFLINE=1 UV_NO_INDEX=1 "UV_FIND_LINKS=$TOOLS,$EXTRA,$WHEELHOUSE" UV_PYTHON_DOWNLOADS=never UV_CACHE_DIR=$WORK/uv-cache)
if [ -n "${CONTROLLER_VENV:-}" ]; then
  UV=$CONTROLLER_VENV/bin/uv
  export PATH=$CONTROLLER_VENV/bin:$PATH PYTHONPATH=$REPO/deploys:$REPO/doctor
elif [ -x $WORK/ctl/bin/pyinfra ] && [ -n "$(ls $WORK/uvw/uv-*.data/scripts/uv 2>/dev/null)" ]; then
  UV=$(ls $WORK/uvw/uv-*.data/scripts/uv)  # made by the cold phase
  export PATH=$WORK/ctl/bin:$PATH PYTHONPATH=$REPO/deploys:$REPO/doctor
else
  mkdir -p $WORK/uvw && (cd $WORK/uvw && $CONTROLLER_PYTHON -m zipfile -e "$TOOLS"/uv-*.whl . ) && UV=$(ls $WORK/uvw/uv-*.data/scripts/uv) && chmod +x "$UV"
  "${OFFLINE[@]}" "$UV" venv -q --python "$CONTROLLER_PYTHON" $WORK/ctl && "${OFFLINE[@]}" "$UV" pip install -q --python $WORK/ctl/bin/python pyinfra uv packaging rich \
    || { say "FAILED: controller venv"; exit 1; }
  export PATH=$WORK/ctl/bin:$PATH PYTHONPATH=$REPO/deploys:$REPO/doctor
fi
# The doctor wheel the deploy pushes, built here from this tree (hatchling from $EXTRA).
if has_phase cold || [ -z "$(ls $WORK/doctor-wheel/*.whl 2>/dev/null)" ]; then
  rm -rf $WORK/doctor-wheel && "${OFFLINE[@]}" "$UV" build -q --wheel --out-dir $WORK/doctor-wheel doctor \
    || { say "FAILED: doctor wheel"; exit 1; }
fi
export GPTOSS_DOCTOR_WHEEL=$(ls $WORK/doctor-wheel/*.whl)
say "controller ready: $(pyinfra --version 2>&1 | head -1), doctor wheel $(basename $GPTOSS_DOCTOR_WHEEL)"

# -- the deploy, parameterised --------------------------------------------------------------
export GPTOSS_E2E_WHEELHOUSE=$WHEELHOUSE GPTOSS_E2E_BASE_PYTHON=$BASE_PYTHON GPTOSS_E2E_MODEL_PATH=$MODEL \
       GPTOSS_E2E_API_KEY_FILE=$KEY_FILE GPTOSS_E2E_CUDA_HOME=$CUDA_HOME_KEY GPTOSS_E2E_HEALTH_TIMEOUT_S=400
SERVE=${SERVE_ARGS-'"--load-format", "dummy", "--skip-tokenizer-init", "--enforce-eager"'}
deploy() {  # deploy NAME UTIL EXTRA_ARGS_JSON_LIST
    local name=$1 util=$2 t=$(date +%s) rc args
    args=$(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]) + json.loads(sys.argv[2])))' "[$SERVE]" "$3")
    say "deploy $name (gpu-memory-utilization $util, extra serve args $args)"
    GPTOSS_E2E_GPU_MEMORY_UTILIZATION=$util GPTOSS_E2E_EXTRA_SERVE_ARGS="$args" \
      pyinfra -y tests/gpu/local_inventory.py deploys/gptoss.py > $FIX/pyinfra-$name.txt 2>&1
    rc=$?
    grep -E "Error|error|health|doctor|Grand total|Success" $FIX/pyinfra-$name.txt | grep -v "^\s*$" | tail -12
    say "deploy $name: exit $rc after $(( $(date +%s) - t )) s"
    DEPLOY_RC=$rc
}
log_mark() { stat -c %s "$LOG" 2>/dev/null || echo 0; }
log_since() { tail -c +$(( $1 + 1 )) "$LOG"; }
doctor_box() {  # doctor_box NAME [--deep]: the live box; prints the finding ids
    local name=$1; shift
    gptoss-doctor "$@" --json > $FIX/doctor-$name.json 2> $FIX/doctor-$name.err; local rc=$?
    [ "$#" -eq 0 ] && gptoss-doctor collect > $FIX/box-$name.json 2>/dev/null  # the snapshot, for CI's checks
    ids=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(' '.join(sorted(f['id']+':'+f['severity'] for f in r['findings'])))" $FIX/doctor-$name.json 2>&1)
    say "doctor $name $*: exit $rc; findings: ${ids:-none}"
    result "{\"step\": \"doctor-$name\", \"exit\": $rc, \"findings\": \"$ids\"}"
}
doctor_log() {  # doctor_log NAME FILE
    gptoss-doctor logs --json "$2" > $FIX/logs-$1.json 2>&1; local rc=$?
    ids=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(' '.join(sorted({f['id']+':'+f['severity'] for f in r['findings']})))" $FIX/logs-$1.json 2>&1)
    say "doctor logs $1: exit $rc; findings: ${ids:-none}"
    result "{\"step\": \"logs-$1\", \"exit\": $rc, \"findings\": \"$ids\"}"
}
wait_log() {  # wait_log MARK SECONDS REGEX: until the log since MARK matches, or SECONDS pass
    local end=$(( $(date +%s) + $2 ))
    while [ "$(date +%s)" -lt "$end" ]; do log_since "$1" | grep -qE "$3" && return 0; sleep 1; done; return 1
}
ready_poller() {  # records when /health first answers 200
    rm -f $WORK/ready_at
    ( for _ in $(seq 1 900); do
        if python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2).status==200 else 1)" 2>/dev/null; then
          date +%s.%N > $WORK/ready_at; exit 0; fi; sleep 0.5; done ) &
}
ready_seen() { for _ in $(seq 1 20); do [ -f $WORK/ready_at ] && return 0; sleep 0.5; done; return 1; }
seconds_to_ready() {  # seconds_to_ready MARK head|tail: from the first/last supervisor start since MARK to /health 200
    local s
    s=$(log_since "$1" | grep "gptoss-supervise: starting" | "$2" -n 1 | cut -d' ' -f1)
    python3 -c "import sys,datetime; s=datetime.datetime.strptime(sys.argv[1], '%Y-%m-%dT%H:%M:%S%z').timestamp(); print(round(float(open(sys.argv[2]).read())-s))" "$s" $WORK/ready_at
}

# -- 2. first deploy: cold ---------------------------------------------------------------------
if has_phase cold; then
M0=$(log_mark)
ready_poller
deploy healthy 0.85 "[]"
FIRST_RC=$DEPLOY_RC
if ready_seen; then
    COLD=$(seconds_to_ready "$M0" head)
    say "READY cold: ${COLD}s from the supervisor's start to /health 200"
    result "{\"step\": \"ready-cold\", \"seconds\": $COLD, \"deploy_exit\": $FIRST_RC}"
else
    say "NOT READY after the first deploy (exit $FIRST_RC)"; tail -40 "$LOG"
fi
log_since "$M0" > $FIX/vllm-healthy-start.log
"$SUP" status
curl -s -m 30 http://127.0.0.1:$PORT/v1/completions -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"model": "openai/gpt-oss-20b", "prompt": [1, 2, 3], "max_tokens": 8}' > $FIX/completion.json; echo; say "completion: $(head -c 300 $FIX/completion.json)"
grep -E "attention backend|FlashAttention version|Mxfp4 MoE backend|top-p & top-k|Model loading took|KV cache|Available KV" "$LOG" | sed 's/^/    /' | head -12

# -- 3. the doctor on the live, healthy box ---------------------------------------------------
doctor_box healthy
doctor_box healthy-deep --deep
gptoss-doctor --deep collect > $FIX/box-healthy.json 2> $FIX/box-healthy.err; say "snapshot: exit $? ($(wc -c < $FIX/box-healthy.json) bytes)"
doctor_log healthy $FIX/vllm-healthy-start.log
fi

if has_phase breaks; then

# -- 4a. a second triton beside the first (no restart: what a later pip install leaves) ------
SP=$(ls -d /opt/gptoss/current/lib/python3*/site-packages)
DI=$SP/pytorch_triton-3.6.0.dist-info
mkdir -p "$DI" && printf 'Metadata-Version: 2.1\nName: pytorch-triton\nVersion: 3.6.0\n\n' > "$DI/METADATA" \
  && printf 'pip\n' > "$DI/INSTALLER" && printf 'triton/__init__.py,,\ntriton/language/__init__.py,,\npytorch_triton-3.6.0.dist-info/METADATA,,\n' > "$DI/RECORD"
doctor_box dup-triton
rm -rf "$DI"

# -- 4b. a stale env var in the EnvironmentFile (by hand, as an operator would) ---------------
M=$(log_mark)
echo "VLLM_ATTENTION_BACKEND=TRITON_ATTN_VLLM_V1" >> /etc/gptoss/gptoss.env
"$SUP" restart
wait_log "$M" 60 "Unknown vLLM environment variable|Application startup complete|Error" && say "env-var start: marker seen"
doctor_box stale-env
"$SUP" stop
log_since "$M" > $FIX/vllm-stale-env.log
doctor_log stale-env $FIX/vllm-stale-env.log

# A break made through the deploy itself: deploy NAME UTILIZATION EXTRA_ARGS (its gate is
# expected to fail), stop the service, then judge the box and the log of that start.
break_by_deploy() {
  local name=$1 M
  M=$(log_mark)
  deploy "$name" "$2" "$3"
  result "{\"step\": \"deploy-$name\", \"exit\": $DEPLOY_RC}"
  "$SUP" stop
  doctor_box "$name"
  log_since "$M" > "$FIX/vllm-$name.log"
  doctor_log "$name" "$FIX/vllm-$name.log"
}

# -- 4c. a stale attention-backend name on the command line, through the deploy -------------
break_by_deploy stale-backend 0.85 '["--attention-backend", "TRITON_ATTN_VLLM_V1"]'

# -- 4d. a gpu-memory-utilization the weights and KV cache cannot live with -------------------
break_by_deploy low-memory 0.05 "[]"

# -- 5. healthy again, warm caches -------------------------------------------------------------
if [ "$(el)" -lt "$BUDGET_S" ] && [ "$(( BUDGET_S + 60 - $(el) ))" -gt 150 ]; then
    M=$(log_mark)
    ready_poller
    deploy healthy-warm 0.85 "[]"
    if ready_seen; then
        WARM=$(seconds_to_ready "$M" tail)
        say "READY warm: ${WARM}s"; result "{\"step\": \"ready-warm\", \"seconds\": $WARM, \"deploy_exit\": $DEPLOY_RC}"
    fi
    log_since "$M" > $FIX/vllm-healthy-warm.log
    doctor_log healthy-warm $FIX/vllm-healthy-warm.log
    "$SUP" stop
else
    say "skipping the warm start: $(el)s used of $BUDGET_S"
fi
fi

if has_phase carried; then
# -- 6. caches carried: a new host given the warmed host's JIT caches (gptoss_jit_cache) ------
# The archive is made as jit_cache.py tells operators to; then the box loses every cache (and,
# where the container allows, the page cache) and the deploy brings them back from the archive.
H=/var/lib/gptoss
CACHE_DIRS=$(cd $H && ls -d .triton .cache cache .nv 2>/dev/null | tr '\n' ' ')
say "JIT caches on the box: $(cd $H && du -sh $CACHE_DIRS 2>/dev/null | tr '\t\n' ': ')"
(cd $H && tar -czf $WORK/jit-cache.tgz $CACHE_DIRS) && say "archive: $(du -h $WORK/jit-cache.tgz | cut -f1)"
"$SUP" stop
(cd $H && rm -rf $CACHE_DIRS .jit-cache.sha256)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null && say "page cache dropped" || say "page cache kept (not allowed here)"
M=$(log_mark)
ready_poller
export GPTOSS_E2E_JIT_CACHE=$WORK/jit-cache.tgz
deploy carried 0.85 "[]"
unset GPTOSS_E2E_JIT_CACHE
if ready_seen; then
    CARRIED=$(seconds_to_ready "$M" tail)
    say "READY with carried caches: ${CARRIED}s"; result "{\"step\": \"ready-carried\", \"seconds\": $CARRIED, \"deploy_exit\": $DEPLOY_RC}"
fi
log_since "$M" > $FIX/vllm-carried.log
doctor_log carried $FIX/vllm-carried.log
has_phase upgrade || "$SUP" stop  # an upgrade in this call starts from the running service
fi

# -- 7. serving speed of what the deploy left (PHASES=...,serve then compare) -------------------
# Run after a `cold` phase made with production SERVE_ARGS (no --enforce-eager): `serve` times the
# doctor on the live box, probes which routes answer without the key, and benchmarks the service
# as deployed ("ours"); `compare` stops it and benchmarks, on the same box, vLLM with only the
# model's flags ("bare") and with the official recipe's flags for this GPU ("recipe"), then
# restarts ours for a warm time to ready. bench/serve_gpu.py prints the verdict.
BENCH=$WORK/serve.jsonl
STACK_PY=/opt/gptoss/current/bin/python
if has_phase serve; then
: > "$BENCH"
python3 tests/gpu/time_doctor.py "$FIX/doctor-timing.json"
result "{\"step\": \"doctor-timing\", \"median_s\": $(python3 -c "import json; print(json.load(open('$FIX/doctor-timing.json'))['median_s'])")}"
# Which routes answer without the key (vLLM's key check is a path-prefix test).
: > $FIX/routes-without-key.jsonl
for r in "GET /health" "GET /version" "GET /v1/models" "POST /v1/completions" "POST /invocations" "GET /metrics" \
         "GET /load" "GET /ping" "GET /openapi.json" "GET /docs" "GET /redoc" "POST /tokenize" "POST /detokenize" \
         "POST /generative_scoring" "POST /is_scaling_elastic_ep"; do
  set -- $r
  code=$(curl -s -o /dev/null -m 30 -w '%{http_code}' -X "$1" -H 'Content-Type: application/json' \
         -d '{"model": "openai/gpt-oss-20b", "prompt": [1, 2, 3], "max_tokens": 4, "tokens": [1, 2, 3]}' "http://127.0.0.1:$PORT$2")
  echo "{\"method\": \"$1\", \"path\": \"$2\", \"status_without_key\": $code}" >> $FIX/routes-without-key.jsonl
done
say "routes without the key: $(tr '\n' ' ' < $FIX/routes-without-key.jsonl)"
python3 bench/serve_gpu.py run --url "http://127.0.0.1:$PORT" --key-file "$KEY_FILE" --label ours --out "$BENCH"
say "bench ours: exit $?"
fi

ENVF=$WORK/bench.env
serve_and_bench() {  # serve_and_bench LABEL yes|no CMD...: start vLLM as a user would, time to /health 200, benchmark (yes), stop
  local label=$1 bench=$2; shift 2
  local log=$FIX/vllm-bench-$label.log t0=$(date +%s) pid
  grep -E '^(CUDA_HOME|PATH|HF_HUB_OFFLINE|VLLM_NO_USAGE_STATS)=' /etc/gptoss/gptoss.env > "$ENVF"
  # The service's JIT caches seed this run's home: they change the start time, not the serving speed.
  mkdir -p $WORK/home-$label && (cd /var/lib/gptoss && cp -a .triton .cache cache .nv $WORK/home-$label/ 2>/dev/null)
  ( set -a; . "$ENVF"; set +a; export HOME=$WORK/home-$label XDG_CACHE_HOME=$WORK/home-$label/cache
    exec setsid "$@" ) > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:$PORT/health 2>/dev/null)" = 200 ] && break
    kill -0 $pid 2>/dev/null || break; sleep 1
  done
  say "$label ready after $(( $(date +%s) - t0 )) s"
  result "{\"step\": \"ready-$label\", \"seconds\": $(( $(date +%s) - t0 ))}"
  if [ "$bench" = yes ]; then
    python3 bench/serve_gpu.py run --url "http://127.0.0.1:$PORT" --label "$label" --out "$BENCH"
    say "bench $label: exit $?"
  fi
  kill -INT -- -$pid 2>/dev/null
  for _ in $(seq 1 60); do kill -0 $pid 2>/dev/null || break; sleep 1; done
  kill -KILL -- -$pid 2>/dev/null; sleep 3
}
bench_server() {  # bench_server LABEL FLAGS...: vLLM with only the model's flags and FLAGS
  local label=$1; shift
  serve_and_bench "$label" yes "$STACK_PY" -m vllm.entrypoints.cli.main serve "$MODEL" --served-model-name openai/gpt-oss-20b \
      --load-format dummy --skip-tokenizer-init --host 127.0.0.1 --port "$PORT" "$@"
}

if has_phase compare; then
"$SUP" stop
RECIPE_FLAGS=$(/opt/gptoss/doctor/bin/python tests/gpu/recipe_flags.py /etc/gptoss/manifest.json)
say "official recipe flags for this GPU: ${RECIPE_FLAGS:-<none>}"
bench_server bare
# shellcheck disable=SC2086  # the recipe's flags are words
bench_server recipe $RECIPE_FLAGS
python3 bench/serve_gpu.py compare "$BENCH" --ours ours | tee $FIX/serve-verdict.txt
cp "$BENCH" $FIX/serve.jsonl
if [ "$(el)" -lt "$BUDGET_S" ]; then
  M=$(log_mark); ready_poller; "$SUP" start
  for _ in $(seq 1 300); do [ -f $WORK/ready_at ] && break; sleep 1; done
  if ready_seen; then
    WARM=$(seconds_to_ready "$M" tail); say "READY warm (production): ${WARM}s"
    result "{\"step\": \"ready-warm-production\", \"seconds\": $WARM}"
  fi
  log_since "$M" > $FIX/vllm-warm-production.log
fi
fi

if has_phase upgrade; then
# -- 8. rolling upgrades through deploys/upgrade.py, under gptoss-supervise ---------------------
# Two site stacks made from the wheels the box has (tests/gpu/upgrade_stacks.py): one to roll to
# (a real restart, the health gate on real vLLM), and one whose gate must fail at its version step,
# which must put the box back on the first. Each run writes its report (GPTOSS_UPGRADE_REPORT).
# UPGRADES=next,stale (the default) runs both; a later call may run the second alone.
UPGRADES=${UPGRADES:-next,stale}
if [ ! -s $WORK/upgrade-stack-names ]; then
  FROM=$(python3 -c "import json; print(json.load(open('/etc/gptoss/manifest.json'))['stack'])")
  python3 tests/gpu/upgrade_stacks.py "$FROM" $WORK/upgrade-stacks.toml > $WORK/upgrade-stack-names
fi
read -r NEXT STALE < $WORK/upgrade-stack-names
[ -n "${STALE:-}" ] || { say "FAILED: upgrade stacks"; exit 1; }
cp $WORK/upgrade-stacks.toml $FIX/
export GPTOSS_E2E_EXTRA_STACK_FILES="[\"$WORK/upgrade-stacks.toml\"]"
upgrade_to() {  # upgrade_to NAME STACK [--data K=V ...]
  local name=$1 stack=$2 t=$(date +%s) rc; shift 2
  say "upgrade $name: $(readlink /opt/gptoss/current) -> $stack"
  GPTOSS_UPGRADE_REPORT=$FIX/upgrade-$name.json \
    pyinfra -y tests/gpu/local_inventory.py deploys/upgrade.py --data "gptoss_stack=$stack" "$@" > $FIX/pyinfra-upgrade-$name.txt 2>&1
  rc=$?
  grep -E "STOPPED|failed step|back on|rollback|upgraded|Error" $FIX/pyinfra-upgrade-$name.txt | tail -8
  local status
  status=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(' '.join(f\"{h['host']}:{h['status']}:{h.get('step') or ''}:{h.get('restart_gate_s')}\" for h in r['hosts']))" $FIX/upgrade-$name.json 2>&1)
  local served
  served=$(curl -s -m 10 http://127.0.0.1:$PORT/version | python3 -c "import json,sys; print(json.load(sys.stdin).get('version'))" 2>/dev/null)
  say "upgrade $name: exit $rc after $(( $(date +%s) - t )) s; report: $status; current -> $(readlink /opt/gptoss/current); /version $served"
  result "{\"step\": \"upgrade-$name\", \"exit\": $rc, \"seconds\": $(( $(date +%s) - t )), \"hosts\": \"$status\", \"current\": \"$(readlink /opt/gptoss/current)\", \"served\": \"$served\"}"
}
M=$(log_mark)
"$SUP" is-active >/dev/null 2>&1 || { say "the service is not running: starting it first"; "$SUP" start; }
case ",$UPGRADES," in *,next,*) upgrade_to next "$NEXT";; esac
case ",$UPGRADES," in *,stale,*)
upgrade_to stale "$STALE"
curl -s -m 30 http://127.0.0.1:$PORT/v1/completions -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"model": "openai/gpt-oss-20b", "prompt": [1, 2, 3], "max_tokens": 8}' > $FIX/completion-after-rollback.json
say "after the rollback: $SUP is-active: $("$SUP" is-active); completion: $(head -c 200 $FIX/completion-after-rollback.json)"
doctor_box after-rollback
;; esac
log_since "$M" > $FIX/vllm-upgrades-$(date +%s).log
fi

if has_phase variant; then
# -- 9. the service's own command with other flags (VARIANT_ARGS, default a smaller CUDA graph
# capture range): its time to ready on a first and a second start, and its serving speed, to weigh
# start time against speed. Run after `serve` (the same bench file) and before the pack.
"$SUP" stop
VARIANT_ARGS=${VARIANT_ARGS:---max-cudagraph-capture-size 512}
VARIANT_LABEL=${VARIANT_LABEL:-ours-capture512}
mapfile -t VARGV < <(python3 - "$VARIANT_ARGS" <<'PYEOF'
import json, shlex, sys
argv = json.load(open("/etc/gptoss/manifest.json"))["argv"][2:]  # after `vllm serve`
extra = shlex.split(sys.argv[1])
names = {a for a in extra if a.startswith("--")}
out, skip = [], False
for a in argv:
    if skip:
        skip = False
        continue
    if a in names:
        skip = True  # these flags take a value
        continue
    out.append(a)
print("\n".join(out + extra))
PYEOF
)
say "variant $VARIANT_LABEL: ${VARGV[*]}"
serve_and_bench "$VARIANT_LABEL" yes "$STACK_PY" -m vllm.entrypoints.cli.main serve "${VARGV[@]}"
serve_and_bench "$VARIANT_LABEL-warm" no "$STACK_PY" -m vllm.entrypoints.cli.main serve "${VARGV[@]}"
python3 bench/serve_gpu.py compare "$BENCH" --ours ours | tee $FIX/serve-verdict-variant.txt
cp "$BENCH" $FIX/serve.jsonl
fi

# -- pack: the key never leaves the box ------------------------------------------------------
cp /etc/gptoss/manifest.json /etc/systemd/system/gptoss-vllm.service $FIX/ 2>/dev/null
grep -rl "$KEY" $FIX 2>/dev/null | while read -r f; do sed -i "s/$KEY/<redacted>/g" "$f"; say "redacted the key in $f"; done
python3 -c "import json,sys; print(json.dumps([json.loads(l) for l in open(sys.argv[1])], indent=1))" $RESULTS > $OUT/results.json
tar -C $WORK -czf $OUT/fixtures.tar.gz fixtures
say "done: $(el)s"
cat $OUT/results.json
