#!/usr/bin/env bash
# Wall time of the README's main job from a fresh expert cache (the SAC expert is trained, 50
# demonstrations collected, Diffusion Policy trained and evaluated), with N busy neighbours
# (processes spinning on a core) beside it. Prints one JSON line; append it to
# benchmarks/results/main_job.json by hand or with `>>`.
#
#     bash benchmarks/main_job.sh 0      # idle machine
#     bash benchmarks/main_job.sh 1      # one busy neighbour
set -euo pipefail
NEIGHBOURS="${1:-0}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 "$NEIGHBOURS"); do python3 -c "while True: pass" & done
export RLOX_DP_CACHE="$WORK/cache"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s.%N)
python -m rlox_dp train diffusion --env Pendulum-v1 --log-dir "$WORK/run" > "$WORK/out.log" 2>&1
end=$(date +%s.%N)
ret=$(grep -a "eval/return_mean" "$WORK/out.log" | awk '{print $2}')
python3 -c "import json,sys; print(json.dumps({'neighbours': $NEIGHBOURS, 'wall_s': round($end - $start, 1), 'eval_return_mean': float('$ret'), 'loadavg_before': '$load_before', 'threads': [l.split('rlox_dp: ')[-1] for l in open('$WORK/out.log', errors='replace').read().replace(chr(13), chr(10)).splitlines() if 'torch threads for' in l]}))"
