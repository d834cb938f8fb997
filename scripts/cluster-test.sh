#!/usr/bin/env bash
# scripts/cluster-test.sh: the cluster of docker-compose.yml (PostgreSQL,
# three embedd replicas, haproxy) brought up, checked and torn down (issue 18).
# `make cluster-test` runs it.
#
#   0. lint scripts/cluster/*.Dockerfile (npx dockerfilelint);
#   1. start dockerd if none runs (as scripts/docker-test.sh does; shared code
#      in scripts/docker-lib.sh), make the Debian base images if missing;
#   2. docker-compose build (the embedd image from the Dockerfile, PostgreSQL
#      and haproxy from scripts/cluster/);
#   3. docker-compose up -d under a project name of its own, haproxy on a free
#      port of 127.0.0.1; wait for PostgreSQL, every replica's /health and
#      haproxy's checks to see all three replicas up;
#   4. check: every replica says store postgres and its own name (/info,
#      X-Embedd-Replica); haproxy spreads requests over all three; an item
#      written through haproxy is found on every replica (GET /items/{id}
#      and /similar, with the delay after the write was acknowledged);
#   5. docker kill the replica that took that write: requests through haproxy
#      keep being answered, the item is still there, a new write succeeds on
#      another replica and reaches the other survivor; start the killed
#      replica again and find that it caught up on the write it missed;
#   6. stop PostgreSQL: every replica reports it is disconnected, a write
#      through haproxy gets 503, every replica still answers /similar and
#      GET /items/{id}, haproxy keeps them all; start it again: the replicas
#      reconnect by themselves and a new write reaches all three;
#   7. docker-compose down -v, always (trap), so nothing is left behind.
#
# When dockerd cannot start it prints "SKIP: <reason>" and exits 0. Every step
# has a time limit, so it always ends. It prints how long each phase took.
#
# Environment:
#   EMBEDD_CLUSTER_PROJECT  compose project name (default embedd-cluster-test-PID)
#   EMBEDD_DOCKER_WORK      scratch dir (default /tmp/embedd-cluster-test)
#   EMBEDD_KEEP_DOCKERD=1   leave the dockerd this script started running
#   EMBEDD_REBUILD_BASE=1   rebuild the Debian base images
#   EMBEDD_SKIP_LINT=1      do not lint scripts/cluster/*.Dockerfile (npx dockerfilelint)
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${EMBEDD_CLUSTER_PROJECT:-embedd-cluster-test-$$}
WORK=${EMBEDD_DOCKER_WORK:-/tmp/embedd-cluster-test}
REPLICAS=(embedd-1 embedd-2 embedd-3)
# The builds use the classic builder through the docker CLI, like
# scripts/docker-test.sh (BuildKit would need its own network setup here).
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=1
mkdir -p "$WORK"
# docker_ensure, docker_stop_started, base_images_ensure, phase_begin/end
. scripts/docker-lib.sh

die() {
  echo "cluster-test: FAILED: $*" >&2
  exit 1
}
skip() {
  echo "SKIP: $*"
  print_timings
  exit 0
}

compose() {
  timeout "${COMPOSE_TIMEOUT:-300}" docker-compose -p "$PROJECT" "$@"
}

UP=""
cleanup() {
  local rc=$?
  if [ -n "$UP" ]; then
    if [ "$rc" != 0 ]; then
      echo "--- last log lines of each service"
      compose logs --no-color --tail 15 2>&1 || true
    fi
    echo "docker-compose down -v"
    COMPOSE_TIMEOUT=120 compose down -v --remove-orphans > "$WORK/down.log" 2>&1 ||
      { cat "$WORK/down.log"; echo "cluster-test: docker-compose down failed"; }
  fi
  docker_stop_started
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- HTTP: http METHOD PORT PATH [BODY] sets STATUS, BODY and REPLICA -------
# (the X-Embedd-Replica header). 10 s per request; STATUS 000 when no answer.
STATUS=""
BODY=""
REPLICA=""
http() {
  local method=$1 port=$2 path=$3 data=${4:-}
  local args=(-s --max-time 10 -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' -X "$method")
  if [ -n "$data" ]; then
    args+=(-H 'Content-Type: application/json' --data-binary "$data")
  fi
  : > "$WORK/body"
  : > "$WORK/headers"
  STATUS=$(curl "${args[@]}" "http://127.0.0.1:$port$path" || true)
  BODY=$(cat "$WORK/body")
  REPLICA=$(awk 'tolower($1) == "x-embedd-replica:" { sub(/\r$/, "", $2); print $2 }' "$WORK/headers" | tail -n 1)
}

# json EXPR: EXPR (Python, over d, the parsed BODY) printed; "" when it fails.
json() {
  python3 -c 'import json, sys
try:
    d = json.loads(sys.argv[1])
    v = eval(sys.argv[2])
    print(json.dumps(v) if isinstance(v, (dict, list, bool)) or v is None else v)
except Exception:
    print("")' "$BODY" "$1"
}

# Container ids by service, filled after `up` (docker is much quicker to ask
# than docker-compose, and an id stays the same across docker kill and start).
declare -A CID=()
# The published port of a replica's 8080 (it changes when its container
# restarts).
replica_port() {
  { timeout 20 docker port "${CID[$1]}" 8080/tcp 2> /dev/null || true; } | head -n 1 | sed 's/.*://'
}

# Waits up to $2 s for a replica's /health; dies with its log if it exits or
# restarts (the restart policy would otherwise hide a crash loop).
wait_replica() {
  local name=$1 limit=$2 port state end=$((SECONDS + $2))
  local cid=${CID[$name]} restarts
  restarts=$(docker inspect -f '{{.RestartCount}}' "$cid")
  while [ "$SECONDS" -lt "$end" ]; do
    state=$(docker inspect -f '{{.State.Running}} {{.RestartCount}} {{.State.ExitCode}}' "$cid" 2> /dev/null)
    if [ "${state%% *}" != true ] || [ "$(cut -d' ' -f2 <<< "$state")" != "$restarts" ]; then
      echo "--- $name exited: its last log lines"
      docker logs --tail 15 "$cid" 2>&1 || true
      die "$name exited (status ${state##* })"
    fi
    port=$(replica_port "$name")
    if [ -n "$port" ]; then
      http GET "$port" /health
      if [ "$STATUS" = 200 ]; then
        echo "ok: $name answers /health on 127.0.0.1:$port"
        return
      fi
    fi
    sleep 1
  done
  docker logs --tail 15 "$cid" 2>&1 || true
  die "$name's /health did not answer 200 within $limit s (last status $STATUS)"
}

# haproxy's view of the replicas, "embedd-1=UP embedd-2=DOWN ...", from its
# stats CSV (columns: pxname, svname, ..., status is the 18th). A killed
# replica goes DOWN by its checks, then "MAINT (resolution)" once Docker's DNS
# stops resolving its name: both are written DOWN. Transitions ("UP 1/2")
# are kept as they are.
haproxy_view() {
  { curl -s --max-time 5 "http://127.0.0.1:$STATS_PORT/stats;csv" || true; } |
    awk -F, '$1 == "replicas" && $2 ~ /^embedd-/ {
      s = $18; if (s ~ /^MAINT/) s = "DOWN"
      printf "%s%s=%s", sep, $2, s; sep = " " }'
}

# Waits up to $2 s until haproxy_view is exactly $1.
wait_haproxy_view() {
  local want=$1 limit=$2 view="" end=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$end" ]; do
    view=$(haproxy_view)
    if [ "$view" = "$want" ]; then
      echo "ok: haproxy sees $view"
      return
    fi
    sleep 1
  done
  die "haproxy sees '$view' after $limit s, want '$want'"
}

# Polls GET /items/ID on a replica until it answers 200 (up to $3 s); prints
# the delay since $4 (a `now` timestamp) in ms.
wait_item_on() {
  local name=$1 id=$2 limit=$3 since=$4 port deadline
  port=$(replica_port "$name")
  deadline=$(awk -v t="$(now)" -v l="$limit" 'BEGIN { printf "%.3f", t + l }')
  while :; do
    http GET "$port" "/items/$id"
    if [ "$STATUS" = 200 ]; then
      awk -v a="$since" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) * 1000 }'
      return
    fi
    if awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t > d) }'; then
      die "item $id is not on $name after $limit s (GET /items/$id: $STATUS $BODY)"
    fi
    sleep 0.05
  done
}

# write_and_follow ID TEXT NAME...: writes the item through haproxy (POST
# /items), reads it once from the replica that took it ("first_read yes" or
# "no"), then polls GET /items/ID on the named replicas in turn, every
# 5 ms for up to 10 s. Prints "writer NAME" (X-Embedd-Replica of the write)
# and, per replica, "NAME MS": the milliseconds from the acknowledgement to
# the first answer that had the item, or "NAME -" when none did; "error
# STATUS ..." when the write failed. In Python, so that the polling costs
# about a millisecond a round, not a curl and a docker call.
write_and_follow() {
  local id=$1 text=$2 r
  shift 2
  local ports=()
  for r in "$@"; do ports+=("$r=$(replica_port "$r")"); done
  python3 - "$LB_PORT" "$id" "$text" "${ports[@]}" << 'PY'
import json, sys, time, urllib.error, urllib.request

lb, item_id, text = sys.argv[1], sys.argv[2], sys.argv[3]
replicas = [arg.split("=", 1) for arg in sys.argv[4:]]
body = json.dumps({"items": [{"id": item_id, "text": text}]}).encode()
req = urllib.request.Request("http://127.0.0.1:%s/items" % lb, data=body,
                             headers={"Content-Type": "application/json"}, method="POST")
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        writer = resp.headers.get("X-Embedd-Replica", "")
except urllib.error.HTTPError as e:
    print("error", e.code, e.read()[:200])
    sys.exit(0)
except OSError as e:
    print("error 000", e)
    sys.exit(0)
acked = time.monotonic()
print("writer", writer)


def has_item(port):
    try:
        url = "http://127.0.0.1:%s/items/%s" % (port, item_id)
        with urllib.request.urlopen(url, timeout=2) as resp:
            resp.read()
            return True
    except (urllib.error.HTTPError, OSError):
        return False  # 404 until the replica's follower has applied the write


pending = dict(replicas)
seen = {}
# Read your writes: the first read from the replica that took the write,
# right after the acknowledgement, must find it.
if writer in pending:
    print("first_read", "yes" if has_item(pending[writer]) else "no")
while pending and time.monotonic() - acked < 10:
    for name, port in list(pending.items()):
        if has_item(port):
            seen[name] = (time.monotonic() - acked) * 1000
            del pending[name]
    time.sleep(0.005)
for name, _ in replicas:
    print(name, "%.0f" % seen[name] if name in seen else "-")
PY
}

# Runs write_and_follow and checks its result: the writer is one of the
# replicas allowed ($3, space-separated), every named replica has the item.
# Sets WRITER.
WRITER=""
write_everywhere() {
  local id=$1 text=$2 allowed=$3 out name ms
  shift 3
  out=$(write_and_follow "$id" "$text" "$@")
  case "$out" in error*) die "POST /items through haproxy: ${out#error }" ;; esac
  WRITER=$(awk '$1 == "writer" { print $2 }' <<< "$out")
  case " $allowed " in *" $WRITER "*) ;; *) die "the write of $id was taken by '$WRITER', want one of: $allowed" ;; esac
  echo "ok: item $id written through haproxy, taken by $WRITER"
  if grep -q '^first_read ' <<< "$out"; then
    grep -q '^first_read yes$' <<< "$out" ||
      die "read your writes: $WRITER, which took the write of $id, did not have it on the first read after the acknowledgement"
    echo "ok: read your writes: $WRITER had $id on the first read after the acknowledgement"
  fi
  while read -r name ms; do
    [ "$name" = writer ] && continue
    [ "$name" = first_read ] && continue
    [ "$ms" != - ] || die "item $id is not on $name 10 s after the write was acknowledged"
    echo "ok: $id on $name ${ms} ms after the write was acknowledged"
  done <<< "$out"
}

# /similar on one replica: the top hit for TEXT must be ID, with a model version.
check_similar_on() {
  local name=$1 text=$2 id=$3 port top version
  port=$(replica_port "$name")
  http POST "$port" /similar "{\"text\": \"$text\", \"limit\": 1}"
  [ "$STATUS" = 200 ] || die "/similar on $name: $STATUS $BODY"
  top=$(json 'd["result"][0]["id"]')
  version=$(json 'd["model_version"]')
  [ "$top" = "$id" ] || die "/similar on $name: top hit '$top', want $id ($BODY)"
  [ -n "$version" ] || die "/similar on $name has no model_version ($BODY)"
  [ "$REPLICA" = "$name" ] || die "/similar on $name answered as replica '$REPLICA'"
  echo "ok: /similar on $name finds $id first (model_version $version)"
}

# --- 0. lint ------------------------------------------------------------------
# The project's Dockerfile is linted by scripts/docker-test.sh.
if [ -z "${EMBEDD_SKIP_LINT:-}" ]; then
  phase_begin "lint (dockerfilelint)"
  if command -v npx > /dev/null; then
    timeout 300 npx --yes dockerfilelint scripts/cluster/postgres.Dockerfile scripts/cluster/haproxy.Dockerfile ||
      die "dockerfilelint flagged a Dockerfile of scripts/cluster/"
  else
    echo "cluster-test: npx not found, lint not run"
  fi
  phase_end
fi

# --- 1. docker ---------------------------------------------------------------
phase_begin "dockerd"
docker_ensure
if ! command -v docker-compose > /dev/null; then
  [ "$(id -u)" = 0 ] || skip "docker-compose is not installed and this is not root (apt-get install docker-compose)"
  timeout 600 apt-get install -y -qq --no-install-recommends docker-compose > "$WORK/apt.log" 2>&1 ||
    { tail -n 20 "$WORK/apt.log"; skip "apt-get install docker-compose failed"; }
fi
docker version --format 'docker client {{.Client.Version}}, server {{.Server.Version}}'
docker-compose version --short
phase_end

phase_begin "base images"
base_images_ensure
phase_end

# --- 2. build ----------------------------------------------------------------
if [ ! -d models/embedd-small ]; then
  export EMBEDD_MODEL_SRC=tests/fixtures/tiny-f16
  echo "NOTE: models/embedd-small is absent; the replicas serve $EMBEDD_MODEL_SRC"
fi
phase_begin "docker-compose build"
# One replica's service builds embedd:cluster for all three.
COMPOSE_TIMEOUT=2400 compose build postgres embedd-1 haproxy > "$WORK/build.log" 2>&1 ||
  { tail -n 30 "$WORK/build.log"; die "docker-compose build failed (log: $WORK/build.log)"; }
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' |
  grep -E '^(embedd:cluster|embedd-postgres:15|embedd-haproxy:2.6) ' | sed 's/^/  /'
phase_end

# --- 3. up -------------------------------------------------------------------
phase_begin "up and healthy"
EMBEDD_CLUSTER_PORT=$(free_port)
EMBEDD_HAPROXY_STATS_PORT=$(free_port)
export EMBEDD_CLUSTER_PORT EMBEDD_HAPROXY_STATS_PORT
LB_PORT=$EMBEDD_CLUSTER_PORT
STATS_PORT=$EMBEDD_HAPROXY_STATS_PORT
UP=1
compose up -d > "$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; die "docker-compose up -d failed"; }
echo "project $PROJECT: haproxy on 127.0.0.1:$LB_PORT, its stats on 127.0.0.1:$STATS_PORT"
for r in "${REPLICAS[@]}"; do
  CID[$r]=$(compose ps -q "$r")
  [ -n "${CID[$r]}" ] || die "no container for $r"
done
for r in "${REPLICAS[@]}"; do
  wait_replica "$r" 120
done
wait_haproxy_view "embedd-1=UP embedd-2=UP embedd-3=UP" 30
http GET "$LB_PORT" /health
[ "$STATUS" = 200 ] || die "/health through haproxy: $STATUS $BODY"
phase_end

# --- 4. checks ---------------------------------------------------------------
phase_begin "replication"
for r in "${REPLICAS[@]}"; do
  http GET "$(replica_port "$r")" /info
  [ "$STATUS" = 200 ] || die "/info on $r: $STATUS"
  # "store": "postgres" (a string; an object {"kind": ...} is taken too)
  [ "$(json 'd["store"] if isinstance(d["store"], str) else d["store"]["kind"]')" = postgres ] ||
    die "/info on $r: store is $(json 'd.get("store")'), want postgres"
  [ "$(json 'd["replication"]["replica"]')" = "$r" ] || die "/info on $r: replication is $(json 'd.get("replication")')"
  [ "$REPLICA" = "$r" ] || die "$r answers with X-Embedd-Replica '$REPLICA'"
  echo "ok: $r: store postgres, replication $(json 'd["replication"]')"
done

# Round robin: six requests through haproxy reach all three replicas.
seen=""
for _ in 1 2 3 4 5 6; do
  http GET "$LB_PORT" /health
  [ "$STATUS" = 200 ] || die "/health through haproxy: $STATUS"
  seen="$seen $REPLICA"
done
n=$(tr ' ' '\n' <<< "$seen" | grep -c . | tr -d ' ')
distinct=$(tr ' ' '\n' <<< "$seen" | grep . | sort -u | tr '\n' ' ')
[ "$(wc -w <<< "$distinct")" = 3 ] || die "haproxy sent 6 requests to '$distinct' ($seen), want all 3 replicas"
echo "ok: haproxy spread $n requests over $distinct"

# Filler items first, so that /similar has something to rank below cluster-a.
http POST "$LB_PORT" /items '{"items": [{"id": "filler-1", "text": "stock prices fell sharply on monday"},
  {"id": "filler-2", "text": "a recipe for lemon cake with poppy seeds"}]}'
[ "$STATUS" = 200 ] || die "POST /items (fillers): $STATUS $BODY"
TEXT_A="the cluster keeps every acknowledged write"
write_everywhere cluster-a "$TEXT_A" "${REPLICAS[*]}" "${REPLICAS[@]}"
for r in "${REPLICAS[@]}"; do
  wait_item_on "$r" filler-2 10 "$(now)" > /dev/null
  check_similar_on "$r" "$TEXT_A" cluster-a
done
phase_end

# --- 5. one replica killed ---------------------------------------------------
phase_begin "replica killed"
VICTIM=$WRITER
SURVIVORS=()
for r in "${REPLICAS[@]}"; do [ "$r" = "$VICTIM" ] || SURVIVORS+=("$r"); done
timeout 30 docker kill "${CID[$VICTIM]}" > /dev/null
killed=$(now)
echo "killed $VICTIM (docker kill, SIGKILL)"
# Every request through haproxy must be answered, beginning at once: a
# connect to the dead replica fails and is retried on another.
fails=0
for i in $(seq 1 12); do
  if [ $((i % 2)) = 0 ]; then
    http GET "$LB_PORT" /items/cluster-a
  else
    http POST "$LB_PORT" /similar "{\"text\": \"$TEXT_A\", \"limit\": 1}"
  fi
  if [ "$STATUS" != 200 ]; then
    fails=$((fails + 1))
    echo "request $i through haproxy: $STATUS ${BODY:0:200}"
  fi
  [ "$REPLICA" != "$VICTIM" ] || die "request $i was answered by the killed $VICTIM"
done
[ "$fails" = 0 ] || die "$fails of 12 requests through haproxy failed after the kill"
echo "ok: 12 requests through haproxy answered by the survivors in $(awk -v a="$killed" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s"
want=""
for r in "${REPLICAS[@]}"; do
  if [ "$r" = "$VICTIM" ]; then s=DOWN; else s=UP; fi
  want="$want${want:+ }$r=$s"
done
wait_haproxy_view "$want" 15

TEXT_B="a write made while one replica is down"
write_everywhere cluster-b "$TEXT_B" "${SURVIVORS[*]}" "${SURVIVORS[@]}"
for r in "${SURVIVORS[@]}"; do
  wait_item_on "$r" cluster-a 1 "$(now)" > /dev/null
done
echo "ok: cluster-a, written through $VICTIM before it was killed, is on both survivors"

# Restarted, the victim catches up on the write it missed.
timeout 60 docker start "${CID[$VICTIM]}" > /dev/null
restarted=$(now)
wait_replica "$VICTIM" 120
ms=$(wait_item_on "$VICTIM" cluster-b 30 "$restarted")
echo "ok: restarted $VICTIM has cluster-b (missed while it was down) ${ms} ms after its start"
check_similar_on "$VICTIM" "$TEXT_B" cluster-b
wait_haproxy_view "embedd-1=UP embedd-2=UP embedd-3=UP" 30
phase_end

# --- 6. PostgreSQL stopped and started ---------------------------------------
# Waits up to $2 s until every replica's /info says replication.connected $1.
wait_connected() {
  local want=$1 limit=$2 r got end=$((SECONDS + $2))
  for r in "${REPLICAS[@]}"; do
    while :; do
      http GET "$(replica_port "$r")" /info
      got=$(json 'd["replication"]["connected"]')
      [ "$got" = "$want" ] && break
      [ "$SECONDS" -lt "$end" ] || die "$r: replication.connected is '$got' after $limit s, want $want"
      sleep 0.5
    done
  done
  echo "ok: every replica says replication.connected $want"
}

phase_begin "postgres stopped"
COMPOSE_TIMEOUT=60 compose stop postgres > /dev/null 2>&1 || die "docker-compose stop postgres failed"
echo "stopped postgres (docker-compose stop: SIGINT, fast shutdown)"
wait_connected false 15
http POST "$LB_PORT" /items '{"items": [{"id": "cluster-c", "text": "written while the database is down"}]}'
[ "$STATUS" = 503 ] || die "a write with PostgreSQL down: $STATUS $BODY, want 503"
echo "ok: a write through haproxy is refused: 503 $(json 'd.get("error", d)')"
for r in "${REPLICAS[@]}"; do
  check_similar_on "$r" "$TEXT_A" cluster-a
  http GET "$(replica_port "$r")" /items/cluster-b
  [ "$STATUS" = 200 ] || die "GET /items/cluster-b on $r with PostgreSQL down: $STATUS $BODY"
done
echo "ok: every replica answers reads from memory"
wait_haproxy_view "embedd-1=UP embedd-2=UP embedd-3=UP" 5

COMPOSE_TIMEOUT=60 compose start postgres > /dev/null 2>&1 || die "docker-compose start postgres failed"
echo "started postgres again"
wait_connected true 60
write_everywhere cluster-c "written after the database came back" "${REPLICAS[*]}" "${REPLICAS[@]}"
for r in "${REPLICAS[@]}"; do
  wait_item_on "$r" cluster-a 1 "$(now)" > /dev/null
done
echo "ok: the items written before the restart are still on every replica"
phase_end

# --- 7. what PostgreSQL holds ----------------------------------------------
phase_begin "postgres volume"
docker volume inspect "${PROJECT}_pgdata" > /dev/null || die "no named volume ${PROJECT}_pgdata"
echo "ok: PostgreSQL's data is in the named volume ${PROJECT}_pgdata"
echo "embedd's tables: $(compose exec -T postgres psql -U postgres -d embedd -Atc \
  "select string_agg(tablename, ' ' order by tablename) from pg_tables where tablename like 'embedd%'" | tr -d '\r')"
phase_end

print_timings
echo
echo "cluster-test: PASSED"
