# shellcheck shell=bash
# scripts/docker-lib.sh: what scripts/docker-test.sh and scripts/cluster-test.sh
# share: finding the host's Debian mirror, starting dockerd, and making the
# debian:bookworm and debian:bookworm-slim base images locally (no registry is
# reachable here), and timing the phases of a test. Sourced, not run.
#
# The caller defines:
#   WORK    scratch directory (rootfs, dockerd's log)
#   die     prints a failure and exits non-zero
#   skip    prints why the test cannot run and exits 0
# and reads STARTED_DOCKERD (the pid of the dockerd started here, or empty)
# to stop it on exit with docker_stop_started.

DOCKER_SUITE=bookworm
STARTED_DOCKERD=""

# Phases and how long each took: phase_begin NAME ... phase_end, then
# print_timings at the end.
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

# Installs docker.io and debootstrap when one is missing, then makes sure a Docker daemon answers, starting dockerd if
# none runs (STARTED_DOCKERD is then its pid). Calls skip when that cannot be.
docker_ensure() {
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
  if timeout 20 docker info > /dev/null 2>&1; then
    return
  fi
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
    local why="dockerd exited"
    if kill -0 "$STARTED_DOCKERD" 2> /dev/null; then why="dockerd did not answer within 60 s"; fi
    kill "$STARTED_DOCKERD" 2> /dev/null || true
    STARTED_DOCKERD=""
    skip "$why (see its log above)"
  fi
}

# Stops the dockerd that docker_ensure started (not one that was running
# before), unless EMBEDD_KEEP_DOCKERD is set; waits up to 30 s for it.
docker_stop_started() {
  if [ -n "$STARTED_DOCKERD" ] && [ -z "${EMBEDD_KEEP_DOCKERD:-}" ]; then
    kill "$STARTED_DOCKERD" 2> /dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "$STARTED_DOCKERD" 2> /dev/null || break
      sleep 1
    done
  fi
}

# debian:bookworm is a plain minbase debootstrap; debian:bookworm-slim is the
# same tree slimmed the way Debian's official -slim images are (debuerreotype
# --slimify): no docs but copyright files, no man pages, info or locales, and a
# dpkg config that keeps future installs from adding them back.
build_base_images() {
  local mirror security rootfs suite=$DOCKER_SUITE
  mirror=${EMBEDD_DEBIAN_MIRROR:-$(host_mirror "$suite")}
  mirror=${mirror:-http://deb.debian.org/debian}
  security=${EMBEDD_DEBIAN_SECURITY_MIRROR:-$(host_mirror "$suite-security")}
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  echo "debootstrap --variant=minbase $suite from $mirror (log: $WORK/debootstrap.log)"
  timeout 900 debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log"; die "debootstrap failed"; }

  # apt sources: the same mirror, plus updates and security like the host.
  rm -f "$rootfs/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$mirror" "$suite" "$suite"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$security" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security" "$suite"
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
  tar -C "$rootfs" --numeric-owner -c . | timeout 600 docker import "${changes[@]}" - "debian:$suite" > /dev/null
  echo "imported debian:$suite ($(du -sh "$rootfs" | cut -f1))"

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
  tar -C "$rootfs" --numeric-owner -c . | timeout 600 docker import "${changes[@]}" - "debian:$suite-slim" > /dev/null
  echo "imported debian:$suite-slim ($(du -sh "$rootfs" | cut -f1))"
  rm -rf "$rootfs"
}

# Builds the base images when one is missing (or EMBEDD_REBUILD_BASE is set).
base_images_ensure() {
  local suite=$DOCKER_SUITE
  if [ -n "${EMBEDD_REBUILD_BASE:-}" ] ||
    ! docker image inspect "debian:$suite" > /dev/null 2>&1 ||
    ! docker image inspect "debian:$suite-slim" > /dev/null 2>&1; then
    command -v debootstrap > /dev/null || die "debootstrap is not installed"
    build_base_images
  else
    echo "debian:$suite and debian:$suite-slim exist (EMBEDD_REBUILD_BASE=1 rebuilds them)"
  fi
}
