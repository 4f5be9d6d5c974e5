#!/bin/bash
# Issue 21, item 8: seconds to refuse a bad argument (3 runs each): error_timing.sh SRC_DIR
# usage: timing.sh SRC  -> seconds for the two error cases (3 runs each)
SRC=$1
for case in meraser finetune; do
  for i in 1 2 3; do
    if [ $case = meraser ]; then args="erase meraser --model /tmp/dfx/tiny --out /tmp/dfx/w/t n_eras=4";
    else args="finetune --model /tmp/dfx/tiny --data missing.jsonl --out /tmp/dfx/w/t"; fi
    s=$(date +%s.%N); PYTHONPATH=$SRC OMP_NUM_THREADS=1 ${PYTHON:-python} -m expunge.cli $args >/dev/null 2>/tmp/dfx/timing.err; rc=$?; e=$(date +%s.%N)
    printf "%s %s run%d rc=%d %.2f s  %s\n" $(basename $(dirname $SRC)) $case $i $rc $(echo "$e - $s" | bc) "$(tail -1 /tmp/dfx/timing.err | cut -c1-80)"
  done
done
