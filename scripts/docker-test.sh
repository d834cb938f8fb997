#!/usr/bin/env bash
# scripts/docker-test.sh: the Docker round trip, from base images to a
# restarted container (issue 6, "Docker"). `make docker-test` runs it.
#
#   0. lint the Dockerfile with dockerfilelint (npx);
#   1. install docker.io and debootstrap if missing, start dockerd if none runs;
#   2. build debian:bookworm and debian:bookworm-slim locally if missing
#      (debootstrap --variant=minbase, docker import: no registry is reachable);
#   3. DOCKER_BUILDKIT=0 docker build the image (--network host, so apt in the
#      build reaches the host's Debian mirror);
#   4. run it on a random port of 127.0.0.1 with a named volume for /data;
#   5. wait for /health and the HEALTHCHECK, check /embed, /items, /similar,
#      stop it (SIGTERM, exit 0 or 143, "info stopped" in the log), start
#      a new container on the same volume and find the item again.
#
# When dockerd cannot start (no privileges, no docker.io) it prints why and
# "SKIPPED" and exits 0. Every step has a time limit, so it always ends.
# It prints how long each phase took.
#
# Environment:
#   EMBEDD_IMAGE          image tag to build (default embedd:test)
#   EMBEDD_DOCKER_WORK    scratch dir for the rootfs and dockerd's log
#                         (default /tmp/embedd-docker)
#   EMBEDD_DEBIAN_MIRROR  Debian mirror for the base image (default: the
#                         host's, from /etc/apt/sources.list*)
#   EMBEDD_REBUILD_BASE=1 rebuild the base images even if they exist
#   EMBEDD_SKIP_LINT=1    skip phase 0
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${EMBEDD_IMAGE:-embedd:test}
WORK=${EMBEDD_DOCKER_WORK:-/tmp/embedd-docker}
SUITE=bookworm
export DOCKER_BUILDKIT=0
mkdir -p "$WORK"

# --- helpers -----------------------------------------------------------------
PHASES=()
phase_t0=0
phase_name=""
now() { date +%s.%N; }
phase_begin() {
  phase_name=$1
  phase_t0=$(now)
  echo
  echo "== $phase_name"
}
phase_end() {
  local secs
  secs=$(awk -v a="$phase_t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  PHASES+=("$(printf '%-28s %7s s' "$phase_name" "$secs")")
  echo "-- $phase_name: ${secs} s"
}
print_timings() {
  echo
  echo "== timings"
  local p
  for p in "${PHASES[@]}"; do echo "  $p"; done
}
die() {
  echo "docker-test: FAILED: $*" >&2
  exit 1
}
skip() {
  echo "docker-test: $*"
  echo "docker-test: SKIPPED (Docker round trip not run)"
  print_timings
  exit 0
}

# Containers, volume and the dockerd this script started are removed on exit.
CONTAINERS=()
VOLUME=""
STARTED_DOCKERD=""
cleanup() {
  local c  # -v: the anonymous /cache/huggingface volume goes too
  for c in "${CONTAINERS[@]}"; do
    timeout 60 docker rm -f -v "$c" > /dev/null 2>&1 || true
  done
  if [ -n "$VOLUME" ]; then
    timeout 60 docker volume rm "$VOLUME" > /dev/null 2>&1 || true
  fi
  if [ -n "$STARTED_DOCKERD" ] && [ -z "${EMBEDD_KEEP_DOCKERD:-}" ]; then
    kill "$STARTED_DOCKERD" 2> /dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "$STARTED_DOCKERD" 2> /dev/null || break
      sleep 1
    done
  fi
}
trap cleanup EXIT

# The host's Debian mirror for a suite: deb822 .sources files first, then
# one-line .list files. Prints nothing when none names the suite.
host_mirror() {
  local suite=$1 f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk -v s="$suite" 'BEGIN { RS = ""; FS = "\n" }
      { uri = ""; ok = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
          if ($i ~ /^Suites:/) { n = split($i, b, /[ \t]+/); for (j = 2; j <= n; j++) if (b[j] == s) ok = 1 }
          if ($i ~ /^Enabled:[ \t]*no/) ok = 0
        }
        if (ok && uri != "") { print uri; exit } }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(sed -e 's/\[[^]]*\]//' "$f" | awk -v s="$suite" '$1 == "deb" && $3 == s { print $2; exit }')
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
}

# --- 0. lint -----------------------------------------------------------------
if [ -z "${EMBEDD_SKIP_LINT:-}" ]; then
  phase_begin "lint (dockerfilelint)"
  if command -v npx > /dev/null; then
    timeout 300 npx --yes dockerfilelint Dockerfile || die "dockerfilelint flagged the Dockerfile"
  else
    echo "docker-test: npx not found, lint not run"
  fi
  phase_end
fi

# --- 1. docker and dockerd ---------------------------------------------------
phase_begin "dockerd"
if ! command -v dockerd > /dev/null || ! command -v debootstrap > /dev/null; then
  if [ "$(id -u)" != 0 ]; then
    skip "docker.io or debootstrap is not installed and this is not root (apt-get install docker.io debootstrap)"
  fi
  echo "installing docker.io debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq || skip "apt-get update failed"
  timeout 600 apt-get install -y -qq --no-install-recommends docker.io debootstrap > "$WORK/apt.log" 2>&1 ||
    { tail -n 20 "$WORK/apt.log"; skip "apt-get install docker.io debootstrap failed"; }
fi
if ! timeout 20 docker info > /dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    skip "no Docker daemon answers and starting dockerd needs root"
  fi
  echo "starting dockerd (log: $WORK/dockerd.log)"
  dockerd > "$WORK/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 1 60); do
    if timeout 5 docker info > /dev/null 2>&1; then break; fi
    if ! kill -0 "$STARTED_DOCKERD" 2> /dev/null; then break; fi
    sleep 1
  done
  if ! timeout 10 docker info > /dev/null 2>&1; then
    echo "--- last lines of $WORK/dockerd.log"
    tail -n 15 "$WORK/dockerd.log" || true
    why="dockerd exited"
    if kill -0 "$STARTED_DOCKERD" 2> /dev/null; then why="dockerd did not answer within 60 s"; fi
    kill "$STARTED_DOCKERD" 2> /dev/null || true
    STARTED_DOCKERD=""
    skip "$why (see its log above)"
  fi
fi
docker version --format 'docker client {{.Client.Version}}, server {{.Server.Version}}'
phase_end

# --- 2. base images ----------------------------------------------------------
# debian:bookworm is a plain minbase debootstrap; debian:bookworm-slim is the
# same tree slimmed the way Debian's official -slim images are (debuerreotype
# --slimify): no docs but copyright files, no man pages, info or locales, and a
# dpkg config that keeps future installs from adding them back.
build_base_images() {
  local mirror security rootfs
  mirror=${EMBEDD_DEBIAN_MIRROR:-$(host_mirror "$SUITE")}
  mirror=${mirror:-http://deb.debian.org/debian}
  security=${EMBEDD_DEBIAN_SECURITY_MIRROR:-$(host_mirror "$SUITE-security")}
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  echo "debootstrap --variant=minbase $SUITE from $mirror (log: $WORK/debootstrap.log)"
  timeout 900 debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log"; die "debootstrap failed"; }

  # apt sources: the same mirror, plus updates and security like the host.
  rm -f "$rootfs/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$mirror" "$SUITE" "$SUITE"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$security" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security" "$SUITE"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } > "$rootfs/etc/apt/sources.list.d/debian.sources"
  # As in the official images: no package caches kept, no translations.
  cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" << 'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' > "$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/cache/apt/"*.bin "$rootfs/var/lib/apt/lists/"*
  rm -rf "${rootfs:?}/dev/"* "${rootfs:?}/proc/"* "${rootfs:?}/sys/"* "${rootfs:?}/tmp/"* "${rootfs:?}/var/log/"*.log

  local changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change 'CMD ["bash"]')
  tar -C "$rootfs" --numeric-owner -c . | timeout 600 docker import "${changes[@]}" - "debian:$SUITE" > /dev/null
  echo "imported debian:$SUITE ($(du -sh "$rootfs" | cut -f1))"

  # slim
  cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker" << 'EOF'
# Drop files not needed in a container (as Debian's -slim images do).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs/usr/share/man/"* "$rootfs/usr/share/groff/"* "$rootfs/usr/share/info/"* \
    "$rootfs/usr/share/lintian/"* "$rootfs/usr/share/linda/"*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  tar -C "$rootfs" --numeric-owner -c . | timeout 600 docker import "${changes[@]}" - "debian:$SUITE-slim" > /dev/null
  echo "imported debian:$SUITE-slim ($(du -sh "$rootfs" | cut -f1))"
  rm -rf "$rootfs"
}

phase_begin "base images"
if [ -n "${EMBEDD_REBUILD_BASE:-}" ] ||
  ! docker image inspect "debian:$SUITE" > /dev/null 2>&1 ||
  ! docker image inspect "debian:$SUITE-slim" > /dev/null 2>&1; then
  command -v debootstrap > /dev/null || die "debootstrap is not installed"
  build_base_images
else
  echo "debian:$SUITE and debian:$SUITE-slim exist (EMBEDD_REBUILD_BASE=1 rebuilds them)"
fi
phase_end

# --- 3. build ----------------------------------------------------------------
MODEL_SRC=models/embedd-small
BUILD_ARGS=()
if [ ! -d "$MODEL_SRC" ]; then
  MODEL_SRC=tests/fixtures/tiny-f16
  BUILD_ARGS=(--build-arg "EMBEDD_MODEL_SRC=$MODEL_SRC")
  echo
  echo "NOTE: models/embedd-small is absent; building with the tiny random-weight"
  echo "      test model $MODEL_SRC as the image's default model instead."
fi
DIM=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["hidden_size"])' "$MODEL_SRC/config.json")

phase_begin "docker build"
timeout 2400 docker build --network host "${BUILD_ARGS[@]}" -t "$IMAGE" . || die "docker build failed"
docker image ls "$IMAGE"
phase_end

# --- 4, 5. run and check -----------------------------------------------------
phase_begin "container tests"
VOLUME="embedd-test-data-$$"
docker volume create "$VOLUME" > /dev/null

# curl to the published port; fails on HTTP errors; 10 s per request.
api() {
  local method=$1 path=$2 body=${3:-}
  if [ -n "$body" ]; then
    curl -fsS --max-time 10 -X "$method" -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$PORT$path"
  else
    curl -fsS --max-time 10 -X "$method" "http://127.0.0.1:$PORT$path"
  fi
}

# Starts a container on the volume; sets CID and PORT, waits for /health.
start_container() {
  # A 1 s health interval so the image's own HEALTHCHECK is exercised here.
  CID=$(timeout 60 docker run -d -p 127.0.0.1::8080 -v "$VOLUME:/data" \
    --health-interval 1s "$IMAGE")
  CONTAINERS+=("$CID")
  PORT=$(timeout 20 docker port "$CID" 8080/tcp | head -n 1 | sed 's/.*://')
  [ -n "$PORT" ] || die "no published port"
  echo "container ${CID:0:12} on 127.0.0.1:$PORT"
  local ok=""
  for _ in $(seq 1 60); do
    if curl -fsS --max-time 2 "http://127.0.0.1:$PORT/health" > /dev/null 2>&1; then
      ok=1
      break
    fi
    if [ "$(docker inspect -f '{{.State.Running}}' "$CID")" != true ]; then break; fi
    sleep 1
  done
  if [ -z "$ok" ]; then
    docker logs "$CID" 2>&1 | tail -n 20
    die "/health did not answer within 60 s"
  fi
  echo "ok: /health $(api GET /health)"
  local health=""
  for _ in $(seq 1 30); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$CID")
    [ "$health" = healthy ] && break
    sleep 1
  done
  [ "$health" = healthy ] || die "HEALTHCHECK status is '$health' after 30 s"
  echo "ok: HEALTHCHECK says healthy"
}

# Stops the container gracefully and checks the exit code and the log.
stop_container() {
  local code logs
  timeout 90 docker stop -t 60 "$CID" > /dev/null || die "docker stop timed out"
  code=$(docker inspect -f '{{.State.ExitCode}}' "$CID")
  logs=$(docker logs "$CID" 2>&1)
  if [ "$code" != 0 ] && [ "$code" != 143 ]; then
    echo "$logs" | tail -n 20
    die "container exited with $code, want 0 or 143"
  fi
  grep -q 'SIGTERM received' <<< "$logs" || die "log has no 'SIGTERM received'"
  grep -q ' info stopped$' <<< "$logs" || die "log has no 'info stopped'"
  echo "ok: stopped gracefully (exit $code, log ends: $(tail -n 1 <<< "$logs"))"
}

start_container
echo "model: $(api GET /info | head -c 300)"
uid=$(timeout 20 docker exec "$CID" id -u)
[ "$uid" != 0 ] || die "the server runs as root"
echo "ok: runs as uid $uid"

got=$(api POST /embed '{"inputs": "Hello from the container"}' |
  python3 -c 'import json, sys; v = json.load(sys.stdin); print(len(v), len(v[0]))')
[ "$got" = "1 $DIM" ] || die "/embed returned ${got} (texts, dims), want 1 $DIM"
echo "ok: /embed returned a vector of $DIM dimensions"

TEXT="a small container that serves text embeddings"
api POST /items "{\"items\": [{\"id\": \"doc-1\", \"text\": \"$TEXT\", \"payload\": {\"kind\": \"test\"}},
  {\"id\": 2, \"text\": \"stock prices fell sharply on monday\"}]}" > /dev/null
check_similar() {
  local top
  top=$(api POST /similar "{\"text\": \"$TEXT\", \"limit\": 1, \"with_payload\": true}" |
    python3 -c 'import json, sys; r = json.load(sys.stdin)["result"]; print(r[0]["id"] if r else "")')
  [ "$top" = doc-1 ] || die "/similar's top hit is '$top', want doc-1"
  echo "ok: /similar finds doc-1 ($1)"
}
check_similar "before restart"
stop_container

start_container
count=$(api GET /items/count | python3 -c 'import json, sys; print(json.load(sys.stdin)["count"])')
[ "$count" = 2 ] || die "after restart /items/count is $count, want 2"
echo "ok: both items persisted in the volume"
check_similar "after restart"
stop_container
phase_end

print_timings
echo
echo "docker-test: PASSED"
