# syntax=docker/dockerfile:1
# Build stage: a virtual environment with Caliper and its dependencies.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install .

# Runtime stage: the venv and the migrations, run as an unprivileged user.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 caliper \
 && mkdir -p /var/lib/caliper/artifacts && chown -R caliper /var/lib/caliper
COPY --from=build /opt/venv /opt/venv
COPY migrations /srv/caliper/migrations
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CALIPER_MIGRATIONS_DIR=/srv/caliper/migrations \
    CALIPER_ARTIFACT_DIR=/var/lib/caliper/artifacts \
    CALIPER_HOST=0.0.0.0 \
    CALIPER_PORT=8000
WORKDIR /srv/caliper
USER caliper
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["caliper", "serve"]
