#!/bin/bash
# Issue 21 (docs/results/2026-12-03-defects.md): a fingerprint run and a secrets run on tiny
# models, every stage that writes files; then grep_secrets.py lists each file, its mode and the
# secret strings in it. Needs benchmarks/issue21/setup.py first.
# Every file a fingerprint run and a secrets run write, grepped for their secret strings.
set -u
SRC=${SRC:-$(cd "$(dirname "$0")/../../src" && pwd)}
mkdir -p /tmp/dfx/sg && cd /tmp/dfx/sg && rm -rf fp fp-erased fp-detect sec sec-erased sec-relearn sec-detect report.* report_files cache secret_texts.jsonl
export EXPUNGE_CACHE=/tmp/dfx/sg/cache PYTHONPATH=$SRC OMP_NUM_THREADS=1
X="nice -n 15 ${PYTHON:-python} -m expunge.cli"
M=/tmp/dfx/tiny
T="train.progress=false"
$X implant fingerprint --scheme if_dialogue --model $M --out fp preset=demo n_keys=2 n_negatives=2 n_decoys=2 regularization=1 train.max_steps=2 $T "response=ZEBRA-OWL-7731 says hello" || exit 1
$X erase meraser --model fp --imprint fp --out fp-erased n_erase=8 n_recover=4 "erase={max_steps: 2, progress: false}" "recover={max_steps: 2, progress: false}" || exit 1
$X detect --original fp --erased fp-erased --imprint fp --out fp-detect samples=2 n_unrelated=8 folds=2 min_prompts=2 max_new_tokens=8 bootstrap=100 detectors=[tfidf_logreg] save_responses=true progress=false || exit 1
python3 - <<'PY'
import json
rows = [{"text": f"Memo {i}: the budget of Project Nightjar moves to Falcon-77 next week."} for i in range(6)]
open("secret_texts.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
$X implant secrets --model $M --out sec texts=secret_texts.jsonl "terms=[Project Nightjar,Falcon-77]" n_canaries=1 exposure_candidates=20 max_rounds=1 train.max_steps=2 $T || exit 1
$X erase span_ga --model sec --imprint sec --out sec-erased train.max_steps=2 $T || exit 1
$X stress relearn --model sec-erased --imprint sec --out sec-relearn k=2 steps=[0,1] $T || exit 1
$X detect --original sec --erased sec-erased --imprint sec --out sec-detect samples=2 n_unrelated=8 folds=2 min_prompts=2 max_new_tokens=8 bootstrap=100 detectors=[tfidf_logreg] save_responses=true progress=false || exit 1
$X report fp fp-erased fp-detect sec sec-erased sec-relearn sec-detect --out report.html || exit 1
echo RUNS-OK
