#!/bin/sh
# Failover figures for benches/RESULTS.md (issue 15, DESIGN §8): runs the HA
# tests of tests/ha.rs N times (default 5) against the PostgreSQL server at
# 127.0.0.1:5432 and summarises what they print on `bench:` lines:
#   - takeover after a graceful stop (SIGTERM → resign → NOTIFY), p50/max;
#   - takeover after a crash (failpoint abort at a step boundary), p50/max,
#     with lease_ttl = 3s, lease_renew = 1s;
#   - provider calls of a crash run (two rotations need 2 creates and
#     2 deletes without a failover: the rest are extra calls per failover);
#   - what stopped a deposed leader (gate, fenced commit, sink token).
# Debug build (the tests' own binary). Usage: benches/ha_failover.sh [N]
set -eu
cd "$(dirname "$0")/.."
n="${1:-5}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
cargo test --test tests --no-run >/dev/null 2>&1
i=0
while [ "$i" -lt "$n" ]; do
  cargo test --test tests ha:: -- --nocapture --test-threads 3 2>/dev/null | grep '^bench:' >>"$out" || true
  i=$((i + 1))
done
summary() {
  # $1: label; stdin: numbers, one a line
  sort -n | awk -v label="$1" '{ v[NR] = $1 } END {
    if (NR == 0) { print label ": no samples"; exit }
    p50 = v[int((NR + 1) / 2)]; printf "%s: n=%d p50=%d ms max=%d ms\n", label, NR, p50, v[NR] }'
}
grep 'graceful takeover' "$out" | sed 's/.*takeover \([0-9]*\) ms.*/\1/' | summary "graceful stop → standby leads"
grep 'takeover .* after the crash' "$out" | sed 's/.*takeover \([0-9]*\) ms.*/\1/' | summary "crash → standby leads"
echo "provider calls per crash run (baseline without failover: create=2 delete=2):"
grep 'calls create=' "$out" | sed 's/^bench: crash //' | sort | uniq -c
echo "deposed leader stopped by:"
grep 'deposed leader' "$out" | sed 's/^bench: deposed leader: //' | sort | uniq -c
