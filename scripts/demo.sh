#!/usr/bin/env bash
# `make demo`: train cross-entropy on Fashion-MNIST-LT (IF 100), then evaluate the same checkpoint
# without retraining, raw and with post-hoc logit adjustment side by side, and say where things are.
#   PY    the interpreter (make passes the project environment's, .venv/bin/python)
#   VENV  the project environment ('' when the user's own environment is used)
#   arguments: config overrides for the training, e.g. train.epochs=1
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VENV=${VENV-.venv}
run=runs/demo-$(date +%Y%m%d-%H%M%S)

"$PY" -m longtail train configs/fmnist_lt/ce_imba100.yaml --out "$run" "$@"
echo
echo "demo: the same CE checkpoint, re-evaluated without retraining: raw, and with post-hoc logit adjustment"
"$PY" -m longtail evaluate "$run" --posthoc la

echo
echo "demo: the run directory is $run (metrics.json, epochs.jsonl, checkpoints/, tb/)"
if [ -n "$VENV" ]; then
    echo "demo: the longtail command lives in $VENV: run 'source $VENV/bin/activate' and then 'longtail --help'," \
         "or call $VENV/bin/longtail directly"
else
    echo "demo: the longtail command is installed in the environment of $PY: 'longtail --help'"
fi
echo "demo: look at the runs with 'tensorboard --logdir runs' (training curves)" \
     "and 'longtail report runs --out report' (tables and figures in report/index.html)"
