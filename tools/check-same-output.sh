#!/usr/bin/env bash
# Shows that two leukoscope binaries give byte-identical results (issue 16: a
# restructuring must not change behaviour). Runs, with each binary,
#   analyze --json            (no inputs: the 72 BCCD test fields of the data folder)
#   classify --json           over the golden crops listed in models/golden.json
# for both model precisions, and compares the outputs byte for byte.
#
#   tools/check-same-output.sh OLD_BINARY NEW_BINARY
#
# The data folder is $LEUKOSCOPE_DATA (default ../shared/data). Exit status 0 when
# every output is identical, 1 otherwise (the differing outputs are kept).
set -euo pipefail
old=${1:?usage: check-same-output.sh OLD_BINARY NEW_BINARY}
new=${2:?usage: check-same-output.sh OLD_BINARY NEW_BINARY}
root=$(cd "$(dirname "$0")/.." && pwd)
data=${LEUKOSCOPE_DATA:-$root/../shared/data}
[ -d "$data" ] || { echo "data folder $data not found (set LEUKOSCOPE_DATA)" >&2; exit 2; }
out=$(mktemp -d)
mapfile -t crops < <(python3 -c "
import json, sys
for it in json.load(open('$root/models/golden.json'))['items']:
    print('$data/' + it['path'])")
status=0
for precision in int8 f32; do
  for bin in old new; do
    b=$old; [ $bin = new ] && b=$new
    (cd "$root" && LEUKOSCOPE_DATA=$data "$b" analyze --json --precision $precision) > "$out/analyze-$precision.$bin.json"
    (cd "$root" && "$b" classify --json --precision $precision "${crops[@]}") > "$out/classify-$precision.$bin.json"
  done
  for what in analyze classify; do
    if cmp -s "$out/$what-$precision.old.json" "$out/$what-$precision.new.json"; then
      echo "same: $what --json --precision $precision ($(wc -c < "$out/$what-$precision.new.json") bytes)"
    else
      echo "DIFFERENT: $what --json --precision $precision (see $out)"; status=1
    fi
  done
done
[ $status = 0 ] && rm -rf "$out"
exit $status
