# Shared by bench/tftp and bench/http: a private network namespace with only `lo` (10.77.0.1 added),
# the release binary, a temp work dir, and cleanup on exit. Source it; needs root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NS="ibnb$$"
W=$(mktemp -d /tmp/ibn-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip addr add 10.77.0.1/32 dev lo
NX="ip netns exec $NS"
SRV=10.77.0.1

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

start_imgbuild() {
  ( RUST_LOG=imgbuild=warn exec $NX "$BIN" -c "$W/cluster/cluster.toml" serve ) </dev/null >/dev/null 2>"$W/imgbuild.log" &
  IMGBUILD_PID=$!; PIDS+=("$IMGBUILD_PID")
  for _ in $(seq 100); do $NX curl -sf "http://$SRV:8080/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "imgbuild serve did not start:"; cat "$W/imgbuild.log"; exit 1
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# ratio A B: A/B with 2 decimals
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "n/a" }'; }
