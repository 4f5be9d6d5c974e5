#!/bin/bash
# Trace detection on the MEraser-erased model of the verify session's quick fingerprint study:
# the from-scratch encoder vs the pretrained (embedded SmolLM2, tune=head) encoder, controls on.
# Runs under the shared heavy lock (flock /tmp/expunge-heavy.lock nice -n 5 detect_compare.sh);
# the code ran from a frozen copy of the defects branch: git archive HEAD src configs | tar -x -C /tmp/dfx/detsrc
set -u
STUDY=/tmp/verify/demo-fingerprint-quick
[ -d /tmp/verify/demo-quick/erase/meraser ] && STUDY=/tmp/verify/demo-quick
export PYTHONPATH=/tmp/dfx/detsrc/src OMP_NUM_THREADS=2
X="${PYTHON:-python} -m expunge.cli"
COMMON="--original $STUDY/implant --erased $STUDY/erase/meraser --imprint $STUDY/implant -c /tmp/dfx/detsrc/configs/methods/detect.yaml folds=2 min_prompts=4 progress=false"
echo "study $STUDY"; date
/usr/bin/time -v $X detect $COMMON --out /tmp/dfx/det-scratch detectors=[tfidf_logreg,encoder,activation_probe] > /tmp/dfx/det-scratch.log 2>&1
echo "scratch rc=$?"; date
/usr/bin/time -v $X detect $COMMON --out /tmp/dfx/det-pretrained detectors=[encoder] options.encoder.pretrained=smollm2-135m > /tmp/dfx/det-pretrained.log 2>&1
echo "pretrained rc=$?"; date
