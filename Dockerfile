# Tidedesk: one image, the command picks the role.
#
#   docker run -e TIDEDESK_DEMO_AGENT_PASSWORD=... tidedesk/tidedesk dev   embedded mode (the
#                                               default command; bound to 0.0.0.0 it needs a
#                                               demo password of your own), port 8080
#   docker run tidedesk/tidedesk chatnode       cluster roles: chatnode, router, migrate,
#   docker run tidedesk/tidedesk controlplane   admin ..., controlplane ..., simulate ...
#
# Build (Tidedesk is installed offline from a wheelhouse made on the host):
#   pip wheel . -w build/wheelhouse
#   docker build -t tidedesk/tidedesk .
# On a machine without a registry, swarm/build-images.sh makes the base from debootstrap and runs
# this with --build-arg BASE_IMAGE=tidedesk-base:bookworm (Debian's Python 3.11).
#
# Secrets: TIDEDESK_<NAME>_FILE=/run/secrets/... sets TIDEDESK_<NAME> from the file, read by
# Tidedesk's settings loader (tidedesk/settings.py, docs/deploy.md).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS install
# Lets swarm/build-images.sh remove this stage's leftovers (the legacy builder keeps them).
LABEL tidedesk.stage=install
COPY build/wheelhouse /wheelhouse
RUN python3 -m venv /opt/tidedesk \
 && /opt/tidedesk/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse tidedesk \
 && /opt/tidedesk/bin/tidedesk --help >/dev/null

FROM ${BASE_IMAGE}
# A fixed numeric uid, so orchestrators can check "runs as non-root" without reading /etc/passwd.
RUN groupadd --system --gid 10001 tidedesk \
 && useradd --system --uid 10001 --gid tidedesk --home-dir /var/lib/tidedesk --create-home \
      --shell /usr/sbin/nologin tidedesk
COPY --from=install /opt/tidedesk /opt/tidedesk
COPY swarm/tidedesk-entrypoint swarm/tidedesk-healthcheck /usr/local/bin/
ENV PATH=/opt/tidedesk/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIDEDESK_HOST=0.0.0.0 \
    TIDEDESK_PORT=8080 \
    TIDEDESK_DATA_DIR=/var/lib/tidedesk
USER 10001:10001
WORKDIR /var/lib/tidedesk
EXPOSE 8080
# Chat nodes, routers and `dev` answer /readyz on TIDEDESK_PORT; the control plane sets
# HEALTHCHECK_URL (its API port) in its service definition.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["tidedesk-healthcheck"]
# Chat nodes drain on SIGTERM (~3 s of reconnects, up to ~20 s of in-flight work): give them 30 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tidedesk-entrypoint"]
CMD ["dev"]
