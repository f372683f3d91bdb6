#!/usr/bin/env bash
# Evaluate a candidate adapter the way a committed baseline was evaluated, and gate it against that baseline.
# The workflow forgetbench-gate.yml runs this script; tests/test_examples.py runs it on the embedded model.
#
#   examples/github/forgetbench-gate.sh ADAPTER BASELINE_DIR [REPORTS_DIR]
#
# Environment: MODEL (default: default, the embedded model), TASKS and LIMITS (the baseline's slices), DATA_DIR,
# GATE_CONFIG (a gate.toml), BENCH (the bench command). Exit: 0 no regression, 1 a regression, 2 anything else.
set -uo pipefail
ADAPTER=${1:?usage: forgetbench-gate.sh ADAPTER BASELINE_DIR [REPORTS_DIR]}
BASELINE=${2:?usage: forgetbench-gate.sh ADAPTER BASELINE_DIR [REPORTS_DIR]}
REPORTS=${3:-gate-reports}
BENCH=${BENCH:-bench}
RESULTS=${RESULTS:-results}
mkdir -p "$REPORTS" || exit 2
$BENCH eval "${MODEL:-default}" --adapter "$ADAPTER" --tasks "${TASKS:-arc_easy}" --task-limits "${LIMITS:-arc_easy=200}" \
    --dtype float32 --name candidate --results-dir "$RESULTS" ${DATA_DIR:+--data-dir "$DATA_DIR"} || exit 2
$BENCH gate candidate --baseline "$BASELINE" --results-dir "$RESULTS" ${GATE_CONFIG:+--config "$GATE_CONFIG"} \
    --markdown "$REPORTS/gate.md" --json "$REPORTS/gate.json" --junit "$REPORTS/gate.xml"
