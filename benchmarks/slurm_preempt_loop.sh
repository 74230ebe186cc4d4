#!/usr/bin/env bash
# Run the Slurm preemption test N times in a row (default 20) and write how many passed to
# benchmarks/results/slurm_preempt_loop.txt. Needs root, slurm-wlm and munge (see docs/slurm.md), and
# Fashion-MNIST; each run starts its own single-node test cluster.
#   benchmarks/slurm_preempt_loop.sh [N] [PYTHON]
set -u
cd "$(dirname "$0")/.."
runs=${1:-20}
python=${2:-.venv/bin/python}
out=benchmarks/results/slurm_preempt_loop.txt
test="tests/test_sweep_slurm.py::test_a_preempted_job_is_requeued_and_resumes_to_the_uninterrupted_metrics"
mkdir -p benchmarks/results
# '+changes': the checkout differs from its commit (this record aside)
header="# $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ":(exclude)$out" || echo '+changes'),\
 $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '# %s, %s runs in a row\n%s\n' "$test" "$runs" "$header" > "$out"
passed=0
for i in $(seq 1 "$runs"); do
  log=$(mktemp)
  if OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src" "$python" -m pytest "$test" -x -q -s -p no:cacheprovider >"$log" 2>&1; then
    passed=$((passed + 1)); result=passed
    # the requeued job relaunched at once, or (relaunch refused by slurmd: "Job credential revoked") resubmitted
    grep -q "^resubmitted " "$log" && result="passed (resubmitted: $(grep -m1 '^resubmitted ' "$log" | cut -d: -f2 | xargs))"
  else
    result=FAILED; cp "$log" "benchmarks/results/slurm_preempt_loop.run$i.log"
  fi
  echo "run $i: $result" | tee -a "$out"
  rm -f "$log"
done
echo "passed $passed of $runs" | tee -a "$out"
[ "$passed" -eq "$runs" ]
