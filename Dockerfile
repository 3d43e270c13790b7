# Build stage: a virtual environment with Caliper and its locked dependencies.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# requirements.lock: every runtime dependency pinned with hashes (pip-compile --generate-hashes), so two
# builds of one commit install the same packages; caliper-client (./client, left out of the lock) and the
# service then go in without re-resolving.
# A proxy's CA bundle, when pip needs one to reach the index, comes as a build secret (never in a layer):
#   docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt .
COPY requirements.lock ./
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && pip install --require-hashes -r requirements.lock
COPY client ./client
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && pip install --no-deps ./client .
# What the runtime never runs: the installers (23 MB) and the packages' own test suites (50 MB).
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && find /opt/venv -depth -type d -name tests -exec rm -rf {} +

# Runtime stage: the venv and the migrations, run as an unprivileged user; /var/lib/caliper (a volume)
# holds the embedded SQLite database and the artifact store, and is the only place it writes.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 caliper \
 && mkdir -p /var/lib/caliper/artifacts && chown -R caliper /var/lib/caliper
COPY --from=build /opt/venv /opt/venv
COPY migrations /srv/caliper/migrations
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CALIPER_MIGRATIONS_DIR=/srv/caliper/migrations \
    CALIPER_DATABASE_URL=sqlite:////var/lib/caliper/caliper.db \
    CALIPER_ARTIFACT_DIR=/var/lib/caliper/artifacts \
    CALIPER_AUTH=required \
    CALIPER_HOST=0.0.0.0 \
    CALIPER_PORT=8000
WORKDIR /srv/caliper
USER caliper
VOLUME ["/var/lib/caliper"]
EXPOSE 8000
# V2 over gRPC when run with CALIPER_GRPC_PORT=8001 (off by default)
EXPOSE 8001
# Ready, not just alive: the database is reachable and migrated (on the port the server was given).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('CALIPER_PORT', '8000')}/readyz\", timeout=2)"]
# Alone (`docker run`), it migrates its embedded SQLite first; compose runs migrations as their own step.
# One server process per CPU (CALIPER_WORKERS overrides): a crash costs one process, not the service.
CMD ["sh", "-c", "caliper db upgrade && exec caliper serve --workers \"${CALIPER_WORKERS:-$(nproc)}\""]
