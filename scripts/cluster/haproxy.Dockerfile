# The cluster's load balancer: Debian's haproxy (2.6) on the locally made
# debian:bookworm-slim, with scripts/cluster/haproxy.cfg (docker-compose.yml
# also mounts that file over it, so an edit needs only a restart).
#
#   DOCKER_BUILDKIT=0 docker build --network host -t embedd-haproxy:2.6 \
#       -f scripts/cluster/haproxy.Dockerfile scripts/cluster
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* \
    && haproxy -v
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
# Checked at build time: a broken config fails the build, not the start.
RUN haproxy -c -f /etc/haproxy/haproxy.cfg
USER haproxy
EXPOSE 8080 8404
# -W: master-worker, -db: stay in the foreground. SIGUSR1 is the soft stop:
# the listeners close and the requests in flight are finished.
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
