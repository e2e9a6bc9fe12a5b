#!/bin/sh
# Instructions per message with sender verification off and on, on the same DKIM-signed messages
# (the method in BENCHMARKS.md): the server under callgrind at c=8 with reused connections, a
# 1,200- and a 400-message run of each, the difference divided by 800. Then the functions with
# the largest inclusive cost per message, the same difference taken function by function
# (bench/scripts/callgrind_top.py).
#   bench/scripts/callgrind.sh            (from the project root, after the release build)
# M, B: the mxhook and mxhook-bench binaries; OUT: where the profiles go (default /tmp/mxcg);
# DB: sqlite (default) or postgres (the gateway's own instructions; PostgreSQL's are not counted);
# STORAGE: local (default) or s3 (the S3 server's own are not counted); MODES: "off on" (default).
set -eu
T=${CARGO_TARGET_DIR:-target}
M=$(realpath "${M:-$T/release/mxhook}")
B=${B:-$T/release/mxhook-bench}
OUT=${OUT:-/tmp/mxcg}
BIG=${BIG:-1200}; SMALL=${SMALL:-400}
DB=${DB:-sqlite}
STORAGE=${STORAGE:-local}
MODES=${MODES:-off on}
mkdir -p "$OUT"
# The bench kills the wrapper it started; valgrind, left running with its output closed, is
# stopped by the pid the wrapper wrote, with SIGTERM so that callgrind writes its counts.
cat > "$OUT/vg-mxhook" <<WRAP
#!/bin/sh
valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.\$MXCG_LABEL" $M "\$@" >/dev/null 2>/dev/null &
echo \$! > "$OUT/vg.pid"
wait
WRAP
chmod +x "$OUT/vg-mxhook"
instructions() { grep -E '^(summary|totals):' "$1" | tail -1 | awk '{print $2}'; }
for mode in $MODES; do
  flag=--sign; [ $mode = on ] && flag=--verify
  for n in $BIG $SMALL; do
    export MXCG_LABEL=$mode.$n
    rm -f "$OUT/cg.$MXCG_LABEL"
    "$B" --binary "$OUT/vg-mxhook" --messages $n --concurrency 8 --connections reuse --greet-pause 0 --keep-data --database "$DB" --storage "$STORAGE" $flag
    pid=$(cat "$OUT/vg.pid")
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
  done
  big=$(instructions "$OUT/cg.$mode.$BIG"); small=$(instructions "$OUT/cg.$mode.$SMALL")
  echo "verification $mode: $BIG messages $big, $SMALL messages $small, per message $(( (big - small) / (BIG - SMALL) ))"
done
# Per-message inclusive cost by function (big run minus small run), and on minus off.
python3 "$(dirname "$0")/callgrind_top.py" "$OUT" "$BIG" "$SMALL" > "$OUT/top.txt"
echo "per-message cost by function: $OUT/top.txt"
