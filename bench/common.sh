# Shared by bench/tftp and bench/http: a private network namespace with only `lo` (10.77.0.1 added),
# the release binary, a temp work dir, and cleanup on exit. Source it; needs root.
# BASE_BIN=path also runs that imgbuild binary (the "before" of a change) as server `base`, in a second private
# netns with the same address, same files and same config, so a before/after pair is measured in the same run,
# side by side with the peers (start it with start_base).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NS="ibnb$$"
NSB="ibnbb$$"
W=$(mktemp -d /tmp/ibn-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  ip netns del "$NSB" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip addr add 10.77.0.1/32 dev lo
NX="ip netns exec $NS"
NXB="ip netns exec $NSB"
SRV=10.77.0.1
if [ -n "${BASE_BIN:-}" ]; then
  ip netns add "$NSB"
  $NXB ip link set lo up
  $NXB ip addr add 10.77.0.1/32 dev lo
fi

# IMGBUILD_BIN=path runs that binary instead of building the release one (say which in the figures you keep).
if [ -n "${IMGBUILD_BIN:-}" ]; then
  BIN=$IMGBUILD_BIN
else
  echo "building the release binary..." >&2
  (cd "$ROOT" && cargo build --release --quiet)
  BIN="$ROOT/target/release/imgbuild"
fi

now() { date +%s.%N; }

# A cluster.toml for `imgbuild serve` in $W/cluster (ipxe_binaries = $1).
write_cluster() {
  mkdir -p "$W/cluster/images" "$W/cluster/state"
  sed -e 's|^interface = "br0"|interface = "lo"|' \
      -e "s|^ipxe_binaries = .*|ipxe_binaries = \"$1\"|" "$ROOT/cluster.toml" > "$W/cluster/cluster.toml"
  printf '\n[paths]\nprofiles = "%s"\nipxe = "%s"\nimages = "images"\nstate = "state"\nsecrets = "secrets"\ncache = "cache"\n' \
    "$ROOT/profiles" "$ROOT/ipxe" >> "$W/cluster/cluster.toml"
}

# serve_in NX BIN DIR LOG: starts `BIN serve` with DIR/cluster.toml in a netns; sets SERVED_PID.
serve_in() {
  ( RUST_LOG=imgbuild=warn exec $1 "$2" -c "$3/cluster.toml" serve ) </dev/null >/dev/null 2>"$4" &
  SERVED_PID=$!; PIDS+=("$SERVED_PID")
  for _ in $(seq 300); do $1 curl -sf "http://$SRV:8080/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "imgbuild serve ($2) did not start:"; cat "$4"; exit 1
}

start_imgbuild() {
  serve_in "$NX" "$BIN" "$W/cluster" "$W/imgbuild.log"
  IMGBUILD_PID=$SERVED_PID
}

# With BASE_BIN: the same cluster (config, images hard-linked, own state) served by BASE_BIN in the second netns.
start_base() {
  [ -n "${BASE_BIN:-}" ] || return 0
  mkdir -p "$W/cluster-base/state"
  cp "$W/cluster/cluster.toml" "$W/cluster-base/cluster.toml"
  cp -al "$W/cluster/images" "$W/cluster-base/images"
  serve_in "$NXB" "$BASE_BIN" "$W/cluster-base" "$W/base.log"
  BASE_PID=$SERVED_PID
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# ratio A B: A/B with 2 decimals
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "n/a" }'; }
