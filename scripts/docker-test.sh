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
export DOCKER_BUILDKIT=0
mkdir -p "$WORK"
# docker_ensure, docker_stop_started, base_images_ensure, phase_begin/end
. scripts/docker-lib.sh

# --- helpers -----------------------------------------------------------------
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
cleanup() {
  local c  # -v: the anonymous /cache/huggingface volume goes too
  for c in "${CONTAINERS[@]}"; do
    timeout 60 docker rm -f -v "$c" > /dev/null 2>&1 || true
  done
  if [ -n "$VOLUME" ]; then
    timeout 60 docker volume rm "$VOLUME" > /dev/null 2>&1 || true
  fi
  docker_stop_started
}
trap cleanup EXIT

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
docker_ensure
docker version --format 'docker client {{.Client.Version}}, server {{.Server.Version}}'
phase_end

# --- 2. base images ----------------------------------------------------------
phase_begin "base images"
base_images_ensure
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
