#!/bin/sh
# Entrypoint of the cluster's PostgreSQL image (scripts/cluster/postgres.Dockerfile).
#
# On first start (no PG_VERSION in $PGDATA, the volume) it runs initdb and
# creates the database "embedd"; then, every time, it runs postgres in the
# foreground as PID 1, so that docker stop's SIGINT reaches it. Arguments are
# passed to postgres (`-c name=value`).
#
# Who may connect: the unix socket and 127.0.0.1 are trusted (the health
# check); from the network, the subnets this container is on ("samenet", the
# compose network) are trusted when POSTGRES_PASSWORD is empty and need that
# password (scram-sha-256) for user postgres when it is set. The port is not
# published by docker-compose.yml, so only the containers of the compose
# network reach it.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  auth=trust
  pwfile=""
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    auth=scram-sha-256
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  fi
  # --no-locale: the slim image has no locales; UTF8 for the items' texts.
  initdb -D "$PGDATA" -U postgres --encoding=UTF8 --no-locale \
    --auth-local=trust --auth-host="$auth" ${pwfile:+--pwfile="$pwfile"}
  if [ -n "$pwfile" ]; then rm -f "$pwfile"; fi
  echo "host all all samenet $auth" >> "$PGDATA/pg_hba.conf"
  # fsync stays on (the default): a write embedd acknowledged is on disk.
  cat >> "$PGDATA/postgresql.conf" << 'CONF'
listen_addresses = '*'
unix_socket_directories = '/var/run/postgresql'
CONF
  echo "CREATE DATABASE embedd;" | postgres --single -D "$PGDATA" postgres > /dev/null
  echo "postgres-entrypoint: created the cluster in $PGDATA and the database embedd"
fi
exec postgres -D "$PGDATA" "$@"
