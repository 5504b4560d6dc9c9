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
# /metrics under load, scale, scan), `rekey dev` (a rotation every ~20 s
# through the file sink) and checks and rotations over HTTPS (through socat,
# with a throw-away CA) run target/release/rekey under
# `valgrind --tool=callgrind --demangle=no` (REKEY_BENCH_WRAP); every
# function of the rekey binary with any cost in any run is listed, in three
# tiers (what an idle daemon runs: start-up and checks; what HTTPS adds; the
# rest: rotations, /status under load, ...), each ordered by summed
# instruction count, so an idle daemon's code is contiguous on its own. The names are the exact mangled symbols of
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
# REKEY_ORDER_BIN=PATH profiles a copy of a release binary made earlier
# (same sources and Cargo.lock: the same names) instead.
if [ -n "${REKEY_ORDER_BIN:-}" ]; then
    BIN="$REKEY_ORDER_BIN"
else
    nice -n 19 cargo build --release --locked --bin rekey >&2
fi
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
BENCH=$(ls -t target/release/deps/targets-* 2>/dev/null | grep -v '\.d$' | head -n 1 || true)
[ -n "$BENCH" ] || { echo "build the bench first: cargo bench --bench targets --no-run" >&2; exit 1; }

WORK=$(mktemp -d /tmp/rekey-order.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp "$BIN" "$WORK/rekey"
BIN="$WORK/rekey"
# Profiles are named cg.<run>.<pid>: the run decides the function's tier.
# The wrapper execs valgrind (same pid: the bench's SIGTERM reaches the
# daemon, which shuts down and callgrind writes its profile).
cat > "$WORK/wrap" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --dump-instr=no \
    --callgrind-out-file=$WORK/cg.\${REKEY_ORDER_RUN:-other}.%p "\$@"
EOF
chmod +x "$WORK/wrap"

for scenario in startup idle status rate unknown latency scan scale; do
    echo "== $scenario (under callgrind)" >&2
    REKEY_ORDER_RUN="$scenario" REKEY_BENCH_SMALL=1 REKEY_BENCH_BIN="$BIN" REKEY_BENCH_WRAP="$WORK/wrap" \
        "$BENCH" "$scenario" --bench >&2 || echo "($scenario failed; its profile is still used)" >&2
done

echo "== rekey dev, 60 s (under callgrind)" >&2
(
    cd "$WORK"
    REKEY_ORDER_RUN=dev "$WORK/wrap" "$BIN" dev >/dev/null 2>&1 &
    pid=$!
    sleep 60
    kill -INT "$pid"
    wait "$pid" || true
)

# The providers are HTTPS in production and the emulators plain HTTP: one
# daemon checks and rotates through a TLS proxy (socat, a throw-away CA from
# openssl) so the handshake and record code of rustls and aws-lc is listed.
if command -v socat >/dev/null && command -v openssl >/dev/null; then
    echo "== TLS: checks and rotations over HTTPS, 60 s (under callgrind)" >&2
    (
        T="$WORK/tls"
        mkdir -p "$T/keys"
        cd "$T"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.pem -days 1 -subj /CN=rekey-order-ca 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout key.pem -out leaf.csr -subj /CN=localhost 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -days 1 -out cert.pem -extfile ext 2>/dev/null
        printf emu-access-key-id > ak
        printf emu-access-key-secret > sk
        port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
        http=$(port)
        https=$(port)
        "$BIN" --log-level warn emulate oceanbase --listen "127.0.0.1:$http" \
            --keys 300 --expiring 5 --within 1h >/dev/null 2>&1 &
        emu=$!
        socat "OPENSSL-LISTEN:$https,reuseaddr,fork,cert=cert.pem,key=key.pem,verify=0" \
            "TCP:127.0.0.1:$http" >/dev/null 2>&1 &
        proxy=$!
        cat > rekey.toml <<TOML
[daemon]
state = "$T/state.db"
listen = "127.0.0.1:0"

[providers.ob]
kind = "oceanbase"
endpoint = "https://localhost:$https"
ca_file = "$T/ca.pem"
org_id = "org-emulator"
project_id = "proj-emulator"
access_key_id = { file = "$T/ak" }
access_key_secret = { file = "$T/sk" }

[sinks.files]
kind = "file"
path = "$T/keys/{lineage}.env"

[[policy]]
name = "p"
provider = "ob"
match = "app-*"
schedule = "*/5 * * * * *"
rotate_before_expiry = "7d"
grace_period = "5s"
sinks = ["files"]
create = { action = "read" }
TOML
        sleep 1
        REKEY_ORDER_RUN=tls "$WORK/wrap" "$BIN" --log-level warn run -c rekey.toml >/dev/null 2>&1 &
        pid=$!
        sleep 60
        kill -TERM "$pid"
        wait "$pid" || true
        kill "$proxy" "$emu"
        echo "TLS run: $(ls keys | wc -l) keys rotated" >&2
    )
fi

# Self cost per function of the rekey object, summed over the runs. In the
# callgrind format, `ob=`/`fn=` (with `(id)` name compression) set the
# current object and function; a cost line after `calls=` is the call's
# inclusive cost, not the function's own.
python3 - "$BIN" "$WORK" "$OUT_FILE" <<'PY'
import glob, os, re, sys
binary, work, out = sys.argv[1], sys.argv[2], sys.argv[3]
# Tiers, each hottest first: 0, what an idle daemon runs (start-up, checks:
# the startup and idle runs); 1, what checks over HTTPS add (TLS: every
# production provider); 2, the rest (rotations, /status and /metrics under
# load, 429s, `rekey dev`). Fault-around then maps tier 0 (and tier 1 with
# TLS) for an idle daemon, not code that only rotations run.
TIER = {"startup": 0, "idle": 0, "tls": 1}
cost, tier = {}, {}
for path in glob.glob(os.path.join(work, "cg.*")):
    run_tier = TIER.get(os.path.basename(path).split(".")[1], 2)
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
                    tier[name] = min(tier.get(name, 2), run_tier)
                except ValueError:
                    pass
# Only code the binary defines: callgrind also names the PLT stubs of libc
# functions after them (LLD: "unable to order shared symbol").
import subprocess
defined = {l.split()[-1] for l in subprocess.run(
    ["nm", "--defined-only", binary], capture_output=True, text=True, check=True
).stdout.splitlines() if len(l.split()) == 3 and l.split()[1] in "tTwW"}
names = [f for f, c in sorted(cost.items(), key=lambda kv: (tier[kv[0]], -kv[1]))
         if c > 0 and f in defined]
# Valgrind hides CPU features it does not emulate (SHA extensions among
# them), so natively aws-lc and sha2 may pick another variant of a function
# that ran: every variant of those families goes in the run's tier, after it.
FAMILIES = [r"_sha(1|256|512)_block_data_order(_\w+)?$", r"_gcm_(init|gmult|ghash)_\w+$",
            r"_ChaCha20_ctr32_\w+$", r"chacha20_poly1305_(open|seal)\w*$",
            r"^_ZN4sha26sha256\w*(x86_sha|shani|soft)\w*$", r"^_ZN4sha26sha512\w*(x86|soft)\w*$"]
listed = set(names)
for fam in FAMILIES:
    ran = [f for f in names if re.search(fam, f)]
    if not ran:
        continue
    t = min(tier[f] for f in ran)
    at = max(names.index(f) for f in ran if tier[f] == t)
    extra = sorted(f for f in defined if re.search(fam, f) and f not in listed)
    for f in extra:
        tier[f] = t
        listed.add(f)
    names[at + 1:at + 1] = extra
counts = [sum(1 for f in names if tier[f] == t) for t in range(3)]
print(f"tiers (idle, +TLS, rest): {counts} functions", file=sys.stderr)
with open(out, "w") as f:
    f.write("# Functions of the rekey daemon that run, in three tiers (an idle\n"
            "# daemon: start-up and checks; what HTTPS adds; the rest: rotations,\n"
            "# /status under load, ...), each hottest first: build.rs has the linker\n"
            "# lay them out first in .text. Generated by benches/order-symbols.sh\n"
            "# (callgrind over the bench scenarios, `rekey dev` and an HTTPS run);\n"
            "# do not edit by hand.\n")
    for n in names:
        f.write(n + "\n")
print(f"{out}: {len(names)} functions from {len(glob.glob(os.path.join(work, 'cg.*')))} profiles", file=sys.stderr)
PY
"$0" --check
