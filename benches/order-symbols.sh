#!/usr/bin/env bash
# Regenerate packaging/hot-symbols.txt: the functions of the release daemon
# that run, hottest first, for the linker to lay out first and together in
# .text (build.rs passes it as -Wl,--symbol-ordering-file; issue 13: the
# kernel's 64-KiB fault-around made ~10 MB of an 11-MB .text resident for
# ~3.5 MB of code that runs).
#
#   cargo bench --bench targets --no-run
#   benches/order-symbols.sh            # profile, write the file (~10 min)
#   cargo build --release               # relink with the new order
#   benches/order-symbols.sh --check    # names in the file the binary lacks
#
# How: the bench scenarios at smoke sizes (REKEY_BENCH_SMALL=1: start-up,
# idle checks, rotations, the rate-limited and 429 paths, /status and
# /metrics under load, scale, scan) and `rekey dev` (a rotation every ~20 s
# through the file sink) run target/release/rekey under
# `valgrind --tool=callgrind --demangle=no` (REKEY_BENCH_WRAP); every
# function of the rekey binary with any cost in any run is listed, ordered by
# its summed instruction count. The names are the exact mangled symbols of
# target/release/rekey, which keeps its symbol table (Cargo.toml: release
# `strip = "debuginfo"`); legacy mangling hashes the crate's -C metadata, so
# a file from another profile or an older Cargo.lock names nothing. After a
# dependency bump or a large change, regenerate (--check says how stale it
# is).
#
# Known gap: valgrind hides CPU features it does not emulate (AVX-512, SHA
# and VAES extensions), so where aws-lc or sha2 pick such a variant natively
# the variant is not listed; it stays where the linker put it (cold), and
# costs a fault-around window when TLS or signing first runs.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_FILE=packaging/hot-symbols.txt
BIN="$PWD/target/release/rekey"

if [ "${1:-}" = "--check" ]; then
    # Names in the file that the binary does not define (the linker skips
    # them silently: --no-warn-symbol-ordering).
    total=$(grep -vc '^#' "$OUT_FILE" || true)
    missing=$(comm -23 <(grep -v '^#' "$OUT_FILE" | sort -u) \
        <(nm "$BIN" | awk '{print $NF}' | sort -u) | wc -l)
    echo "$OUT_FILE: $total names, $missing not in $BIN"
    exit 0
fi

# The release build itself: `cargo bench` links a binary of its own into
# target/release (the bench profile gives the rekey crate another -C
# metadata, hence other names), so build (or re-link) `release` last.
nice -n 19 cargo build --release --locked --bin rekey >&2
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
BENCH=$(ls -t target/release/deps/targets-* 2>/dev/null | grep -v '\.d$' | head -n 1 || true)
[ -n "$BENCH" ] || { echo "build the bench first: cargo bench --bench targets --no-run" >&2; exit 1; }

WORK=$(mktemp -d /tmp/rekey-order.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp "$BIN" "$WORK/rekey"
BIN="$WORK/rekey"
# The wrapper execs valgrind (same pid: the bench's SIGTERM reaches the
# daemon, which shuts down and callgrind writes its profile).
cat > "$WORK/wrap" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --dump-instr=no \
    --callgrind-out-file=$WORK/cg.%p "\$@"
EOF
chmod +x "$WORK/wrap"

for scenario in startup idle status rate unknown latency scan scale; do
    echo "== $scenario (under callgrind)" >&2
    REKEY_BENCH_SMALL=1 REKEY_BENCH_BIN="$BIN" REKEY_BENCH_WRAP="$WORK/wrap" \
        "$BENCH" "$scenario" --bench >&2 || echo "($scenario failed; its profile is still used)" >&2
done

echo "== rekey dev, 60 s (under callgrind)" >&2
(
    cd "$WORK"
    "$WORK/wrap" "$BIN" dev >/dev/null 2>&1 &
    pid=$!
    sleep 60
    kill -INT "$pid"
    wait "$pid" || true
)

# Self cost per function of the rekey object, summed over the runs. In the
# callgrind format, `ob=`/`fn=` (with `(id)` name compression) set the
# current object and function; a cost line after `calls=` is the call's
# inclusive cost, not the function's own.
python3 - "$BIN" "$WORK" "$OUT_FILE" <<'PY'
import glob, os, re, sys
binary, work, out = sys.argv[1], sys.argv[2], sys.argv[3]
cost = {}
for path in glob.glob(os.path.join(work, "cg.*")):
    obs, fns = {}, {}
    ob = fn = None
    skip_next = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        m = re.match(r"(c?ob|c?fn|c?fi|c?fe|fl)=(?:\((\d+)\))?\s*(.*)", line)
        if m:
            key, ident, name = m.groups()
            table = obs if key.endswith("ob") else fns if key.endswith("fn") else None
            if table is not None:
                if ident and name:
                    table[ident] = name
                value = table.get(ident, name) if ident else name
                if key == "ob":
                    ob = value
                elif key == "fn":
                    fn = value
            continue
        if line.startswith("calls="):
            skip_next = True
            continue
        if line and (line[0].isdigit() or line[0] in "+-*"):
            if skip_next:
                skip_next = False
                continue
            parts = line.split()
            if len(parts) >= 2 and ob and fn and os.path.realpath(ob) == os.path.realpath(binary):
                # `name'2`: callgrind's name for a recursion level.
                name = re.sub(r"'\d+$", "", fn)
                try:
                    cost[name] = cost.get(name, 0) + int(parts[1])
                except ValueError:
                    pass
names = [f for f, c in sorted(cost.items(), key=lambda kv: -kv[1])
         if c > 0 and not f.startswith("0x") and not f.startswith("(")]
with open(out, "w") as f:
    f.write("# Functions of the rekey daemon that run (start-up, checks, /status,\n"
            "# rotations), hottest first: build.rs has the linker lay them out first\n"
            "# in .text. Generated by benches/order-symbols.sh (callgrind over the\n"
            "# bench scenarios and `rekey dev`); do not edit by hand.\n")
    for n in names:
        f.write(n + "\n")
print(f"{out}: {len(names)} functions from {len(glob.glob(os.path.join(work, 'cg.*')))} profiles", file=sys.stderr)
PY
BIN="$PWD/target/release/rekey" "$0" --check
