#!/usr/bin/env bash
# The whole CIFAR-10 GPU run (issue 16) in one command: install what is missing, run the
# CUDA-marked tests, decode and cache the data, run the preset under `timeout`, and put
# report.json, report.md, the figures, a summary and the log into one folder.
#
#   scripts/cifar_gpu_run.sh                                   # on the GPU machine (offline is fine)
#   PRESET=tiny DEVICE=cpu NICE="nice -n 10" scripts/cifar_gpu_run.sh   # the CPU rehearsal
#
# Before: copy cifar10-jpeg-q75.npz and SHA256SUMS into .data/cifar10/ of the checkout
# (git ignores .data/; on a device machine carry ".data/cifar10"). Nothing is downloaded
# when everything is importable; a missing package is installed from .whl/ (wheels carried
# inside the checkout) or, failing that, from the index. The budgets behind the preset, and
# how to run this in a GPU session: docs/cifar_gpu_budget.md.
#
# Settings (environment, all optional):
#   OUT         results folder (default: RUN_DIR). It receives at most 8 files: report.json,
#               report.md, gpu_run.json (versions, device, phase times, exit codes), log.txt,
#               figures/{filters,purification_share,lowrank,radius}.png
#   RUN_DIR     where the pipeline writes everything, checkpoints and measures included
#               (default runs/cifar_<preset>_<date>)
#   PRESET      gpu (default) | tiny | smoke | fast
#   DEVICE      auto (default) | cuda | cpu
#   DATA        the CIFAR-10 data (default .data/cifar10);  CACHE  decode cache (default .data/cache)
#   DEADLINE_S  the script ends within this many seconds (default 570, for one 600 s call):
#               the run's `timeout` is what is left then, less a margin for the copies
#   STEPS       any of "setup tests prepare run" (default: all four)
#   PYTHON      interpreter (default python3);  NICE  prefix for heavy commands ("nice -n 10")
#
# Exit status: 1 setup failed, 2 no data; else the run's (124 = stopped by its timeout);
# else 3 when a CUDA test failed; else 0. The summary and the log are written in every case.

set -uo pipefail
START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PRESET=${PRESET:-gpu}
DEVICE=${DEVICE:-auto}
PYTHON=${PYTHON:-python3}
NICE=${NICE:-}
DATA=${DATA:-.data/cifar10}
CACHE=${CACHE:-.data/cache}
DEADLINE_S=${DEADLINE_S:-570}
STEPS=${STEPS:-setup tests prepare run}
RUN_DIR=${RUN_DIR:-runs/cifar_${PRESET}_$(date +%Y%m%d_%H%M%S)}
OUT=${OUT:-$RUN_DIR}
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_run $(printf '%4d' "$(elapsed)")s] $*"; }
has_step() { [[ " $STEPS " == *" $1 "* ]]; }
declare -A T RC
phase() {  # phase NAME COMMAND...: run, time and record the exit status
    local name=$1 t0 rc; shift
    t0=$(date +%s)
    say "== $name: $*"
    "$@"; rc=$?
    T[$name]=$(( $(date +%s) - t0 )); RC[$name]=$rc
    say "== $name: exit $rc after ${T[$name]}s"
    return $rc
}

# ---------------------------------------------------------------- setup (offline unless something is missing)
importable() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }
pip_install() {  # pip_install PACKAGE...: from carried wheels when there are some, else the index
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --find-links .whl "$@"
    else
        "$PYTHON" -m pip install -q "$@"
    fi
}
setup() {
    local cuda_ok
    cuda_ok=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo missing)
    if [[ $cuda_ok == missing || ( $cuda_ok == 0 && $DEVICE != cpu && -n "$(command -v nvidia-smi)" ) ]]; then
        # torch is missing, or cannot see the GPU: the build for the driver's CUDA version
        local v tag
        v=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: \([0-9]*\)\.\([0-9]*\).*/\1\2/p' | head -1)
        tag=cpu
        for t in 130 129 128 126 124 121 118; do [[ -n $v && $v -ge $t ]] && { tag=cu$t; break; }; done
        say "torch: installing the $tag build (driver CUDA ${v:-none})"
        if compgen -G ".whl/torch-*.whl" >/dev/null; then pip_install torch
        else "$PYTHON" -m pip install -q torch --index-url "https://download.pytorch.org/whl/$tag"; fi || { say "cannot install torch (offline?)"; return 1; }
    fi
    local mod pkg
    for mod in numpy:numpy scipy:scipy numba:numba matplotlib:matplotlib PIL:pillow tqdm:tqdm pytest:pytest; do
        pkg=${mod#*:}; mod=${mod%%:*}
        importable "$mod" || { say "installing $pkg"; pip_install "$pkg" || { say "cannot install $pkg"; return 1; }; }
    done
    # the project itself: editable, no dependencies, no build isolation (works offline); PYTHONPATH covers a failure
    local pip_log
    pip_log=$("$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . 2>&1) \
        || { echo "$pip_log" | tail -3; say "pip install -e . failed (above); using PYTHONPATH=$ROOT"; }
    "$PYTHON" - "$ROOT" <<'EOF'
import sys, platform, torch, cifar
root = sys.argv[1]
assert cifar.__file__.startswith(root), f"cifar imported from {cifar.__file__}, not from the checkout {root}"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"CUDA available: {torch.cuda.is_available()}" + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
EOF
}

# ---------------------------------------------------------------- the CUDA-marked tests
cuda_tests() {
    local files
    files=$(grep -rl --include='*.py' 'mark.cuda' tests | sort)
    [[ -n $files ]] || { say "no CUDA-marked tests found"; return 1; }
    # shellcheck disable=SC2086
    $NICE timeout 300 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider -rs $files
}

# ---------------------------------------------------------------- data, then the run
prepare() {
    [[ -e $DATA ]] || { say "no data at $DATA: copy cifar10-jpeg-q75.npz and SHA256SUMS there (and carry it to a device machine)"; return 2; }
    $NICE "$PYTHON" -m cifar prepare --data "$DATA" --cache "$CACHE"
}
run_preset() {
    local left=$(( DEADLINE_S - $(elapsed) - 25 ))
    (( left > 60 )) || { say "only ${left}s left of DEADLINE_S=$DEADLINE_S: not starting the run"; return 124; }
    say "run timeout ${left}s"
    $NICE timeout --signal=INT --kill-after=20 "$left" "$PYTHON" -m cifar run --preset "$PRESET" --out "$RUN_DIR" \
        --data "$DATA" --cache "$CACHE" --device "$DEVICE"
}

# ---------------------------------------------------------------- main
main() {
say "checkout $ROOT; preset $PRESET, device $DEVICE; results in $OUT; pipeline output in $RUN_DIR"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
local stop=0
if has_step setup; then phase setup setup || { say "setup failed: nothing else runs"; stop=1; }; fi
if (( !stop )) && has_step tests; then phase tests cuda_tests; fi
if (( !stop )) && has_step prepare; then phase prepare prepare || { say "the data could not be prepared: the run is not started"; stop=2; }; fi
if (( !stop )) && has_step run; then phase run run_preset; fi

# ---------------------------------------------------------------- results: copy, summarise
if [[ $RUN_DIR -ef $OUT ]]; then :; elif [[ -d $RUN_DIR ]]; then
    for f in report.json report.md; do [[ -f $RUN_DIR/$f ]] && cp "$RUN_DIR/$f" "$OUT/"; done
    if compgen -G "$RUN_DIR/figures/*.png" >/dev/null; then mkdir -p "$OUT/figures" && cp "$RUN_DIR"/figures/*.png "$OUT/figures/"; fi
fi
phases=""
for k in "${!T[@]}"; do phases+="$k=${T[$k]}:${RC[$k]} "; done
"$PYTHON" - "$OUT/gpu_run.json" "$phases" "$PRESET" "$DEVICE" "$RUN_DIR" "$DEADLINE_S" "$(elapsed)" <<'EOF'
import json, platform, subprocess, sys
path, phases, preset, device, run_dir, deadline, total = sys.argv[1:]
try:  # the commit and versions as sim records them (sim.common.meta)
    from sim.common.meta import git_commit, versions
    code = {**git_commit(), "versions": versions()}
except Exception as e:  # the summary must be written whatever broke
    code = {"commit": None, "versions": f"not available: {e}", "python": platform.python_version()}
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except Exception:
        return None
info = {"preset": preset, "device_setting": device, "run_dir": run_dir, "deadline_s": int(deadline), "script_total_s": int(total),
        "phases": {p.split("=")[0]: {"seconds": int(p.split("=")[1].split(":")[0]), "exit": int(p.split(":")[1])} for p in phases.split()},
        "command": f"PRESET={preset} DEVICE={device} scripts/cifar_gpu_run.sh",
        **code, "platform": platform.platform(),
        "nvidia_smi": sh("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except Exception as e:  # the summary must be written whatever broke
    info["torch"] = f"not importable: {e}"
with open(path, "w") as f:
    json.dump(info, f, indent=1)
print(f"summary: {path}")
EOF
say "files in $OUT:"; (cd "$OUT" && find . -type f | sort)
local rc=${RC[run]:-0}
(( stop )) && rc=$stop
(( rc == 0 && ${RC[tests]:-0} != 0 )) && rc=3
say "done in $(elapsed)s, exit $rc"
return "$rc"
}

main 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
