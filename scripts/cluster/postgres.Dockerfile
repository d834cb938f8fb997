# The cluster's PostgreSQL: Debian's postgresql-15 on the locally made
# debian:bookworm-slim (no registry is reachable here; scripts/docker-lib.sh
# makes the base image). docker-compose.yml builds it:
#
#   DOCKER_BUILDKIT=0 docker build --network host -t embedd-postgres:15 \
#       -f scripts/cluster/postgres.Dockerfile scripts/cluster
#
# The data directory is /var/lib/postgresql/data, a volume; the entrypoint
# creates the cluster there on first start (postgres-entrypoint.sh says how).
FROM debian:bookworm-slim

# postgresql-common first, so that its createcluster.conf can say not to make
# the packaged "main" cluster when postgresql-15 is installed: the entrypoint
# makes the one cluster in the volume instead.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/^#?\s*create_main_cluster\b.*$/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data

COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
VOLUME ["/var/lib/postgresql/data"]
USER postgres
EXPOSE 5432
# SIGINT is PostgreSQL's fast shutdown: it ends the replicas' sessions and
# checkpoints. The default SIGTERM (smart shutdown) would wait for every
# replica to disconnect, which they never do, until docker stop kills it.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=2s --timeout=5s --retries=30 \
    CMD pg_isready -q -h 127.0.0.1 -p 5432 -U postgres -d embedd || exit 1
ENTRYPOINT ["postgres-entrypoint.sh"]
