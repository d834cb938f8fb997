#!/bin/sh
# Installs the Debian packages embedd needs to build, test and benchmark.
# Used by the README and by .ci/run. Safe to run more than once.
#   --build   only what building needs (the Dockerfile's build stage)
#   --bench   also the benchmarks' baselines and tools
set -eu
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
BUILD_PKGS="build-essential pkg-config libmicrohttpd-dev libcjson-dev libopenblas-dev libopenblas-openmp-dev \
libcurl4-openssl-dev check libutf8proc-dev libhnswlib-dev libpq-dev g++"
# prometheus: tests/test_server.c checks /metrics with its promtool (19 MB
# download, ~10 s to install; the daemon it ships is not started in a container).
# chromium: tests/test_browser.c drives the web console in it, headless
# (tests/browser, with the npm package playwright-core; ~100 MB, skipped
# when absent).
# postgresql, haproxy: tests/test_cluster.c starts a throwaway PostgreSQL
# (initdb in a temporary directory) and replicas behind haproxy; the
# packages' own services are not needed and are left as Debian sets them.
TEST_PKGS="curl python3 prometheus chromium postgresql haproxy"
if [ "${1:-}" = "--build" ]; then
  TEST_PKGS=""
elif [ "${1:-}" = "--bench" ]; then
  # wrk: scripts/bench_http.sh; python3-faiss: scripts/bench_store.py
  TEST_PKGS="$TEST_PKGS python3-torch python3-numpy wrk python3-faiss"
fi
missing=""
for p in $BUILD_PKGS $TEST_PKGS; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing="$missing $p"
  fi
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
