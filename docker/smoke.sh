#!/usr/bin/env bash
# make docker-smoke: build the image and check it as a user would. Starts a Docker daemon if none answers
# (Debian's docker.io), and, where the base images cannot be pulled, builds stand-ins from Debian's packages
# (debootstrap) tagged as the names the Dockerfile and docker-compose.yml use. Then: the image alone
# (migrate-then-serve on its embedded SQLite, a key made with `caliper keys create` inside the container,
# the README's first evaluation, a model upload and predict, the healthcheck), and compose with Postgres.
# Prints the image's size. Traffic goes to 127.0.0.1 only (host networking for the single container).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=caliper-service:latest
PYTHON_BASE=python:3.11-slim
POSTGRES_BASE=postgres:16-alpine
CACHE=${CALIPER_STANDIN_DIR:-/var/cache/caliper-stand-ins}
CA_BUNDLE=${CALIPER_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
DOCKER=docker
# BuildKit (build secrets) comes with Debian's client; a newer client without buildx cannot use it
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker

say() { printf 'docker-smoke: %s\n' "$*"; }

ensure_daemon() {
  local missing=""
  command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
  command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
  $DOCKER compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
  if [ -n "$missing" ]; then
    say "installing$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    [ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
  fi
  if ! $DOCKER info >/dev/null 2>&1; then
    say "starting dockerd"
    (dockerd >/tmp/caliper-dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do $DOCKER info >/dev/null 2>&1 && return; sleep 1; done
    say "dockerd did not start:"; tail -20 /tmp/caliper-dockerd.log; exit 1
  fi
}

# A Debian bookworm root file system with the given packages, imported as an image named $1.
stand_in() {
  local name=$1; shift
  local root="$CACHE/${name//[:\/]/_}"
  if [ ! -e "$root.done" ]; then  # a stamp: a debootstrap cut short is begun again
    say "building a stand-in for $name from Debian's packages"
    rm -rf "$root" && mkdir -p "$root"
    debootstrap --variant=minbase --include="$(IFS=,; echo "$*")" bookworm "$root" http://deb.debian.org/debian >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    touch "$root.done"
  fi
  tar -C "$root" -c . | $DOCKER import "${IMPORT_CHANGES[@]}" - "$name" >/dev/null
}

ensure_bases() {
  if ! $DOCKER image inspect "$PYTHON_BASE" >/dev/null 2>&1 && ! $DOCKER pull -q "$PYTHON_BASE" >/dev/null 2>&1; then
    IMPORT_CHANGES=()
    stand_in "$PYTHON_BASE" python3 python3-venv python-is-python3 ca-certificates
  fi
  if ! $DOCKER image inspect "$POSTGRES_BASE" >/dev/null 2>&1 && ! $DOCKER pull -q "$POSTGRES_BASE" >/dev/null 2>&1; then
    # the official image's contract: POSTGRES_USER/PASSWORD/DB, data in /var/lib/postgresql/data, port 5432
    IMPORT_CHANGES=(--change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin'
      --change 'ENV PGDATA=/var/lib/postgresql/data' --change 'EXPOSE 5432'
      --change 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]' --change 'CMD ["postgres"]')
    stand_in "$POSTGRES_BASE" postgresql-15
    local container
    container=$($DOCKER create "$POSTGRES_BASE")
    $DOCKER cp docker/postgres-entrypoint "$container":/usr/local/bin/postgres-entrypoint
    $DOCKER commit "$container" "$POSTGRES_BASE" >/dev/null
    $DOCKER rm "$container" >/dev/null
  fi
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_ready() {  # $1: base URL, $2: container (its logs on failure)
  for _ in $(seq 1 90); do
    curl -fsS "$1/readyz" >/dev/null 2>&1 && return
    sleep 1
  done
  say "$2 did not become ready:"; $DOCKER logs "$2" 2>&1 | tail -30; exit 1
}

# The README's first evaluation, a model upload and a predict, as a key of project `smoke`.
exercise() {  # $1: base URL, $2: key
  local auth="Authorization: Bearer $2" answer model
  answer=$(curl -sS --fail-with-body -X POST "$1/v1/evaluations" -H "$auth" -H 'content-type: application/json' \
    -d '{"logits": [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [-0.5, 1.5, 0.0], [1.0, 1.0, 1.0]], "labels": [0, 2, 0, 1],
         "losses": ["cross_entropy"], "metrics": ["accuracy", "ece"]}')
  printf '%s' "$answer" | jq -e '.losses.cross_entropy - 0.9389701905189695 | fabs < 1e-12' >/dev/null \
    || { say "unexpected evaluation: $answer"; exit 1; }
  model=$(curl -sS --fail-with-body -X POST "$1/v1/models" -H "$auth" -F file=@models/digits_mlp.onnx \
    -F 'request={"name": "digits", "embedding_output": "embedding"}' | jq -r .id)
  answer=$(jq -nc '{inputs: {x: [[range(64) | 0.25]]}}' \
    | curl -sS --fail-with-body -X POST "$1/v1/models/$model/predict" -H "$auth" -H 'content-type: application/json' -d @-)
  printf '%s' "$answer" | jq -e '(.probabilities[0] | length) == 10 and (.probabilities[0] | add - 1 | fabs < 1e-5)' \
    >/dev/null || { say "unexpected prediction: $answer"; exit 1; }
  curl -sS -o /dev/null -w '%{http_code}' "$1/v1/evaluations" | grep -qx 401 || { say "no key: not 401"; exit 1; }
}

ensure_daemon
ensure_bases
say "building $IMAGE"
secret=()
[ -s "$CA_BUNDLE" ] && secret=(--secret "id=pip_cert,src=$CA_BUNDLE")
DOCKER_BUILDKIT=1 $DOCKER build --network host "${secret[@]}" -t "$IMAGE" . >/tmp/caliper-docker-build.log 2>&1 \
  || { tail -40 /tmp/caliper-docker-build.log; exit 1; }
say "image size: $($DOCKER image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1 / 1e6}')"

say "the image alone: migrate, serve, key, evaluation, upload and predict, healthcheck"
port=$(free_port)
$DOCKER rm -f caliper-smoke >/dev/null 2>&1 || true
trap '$DOCKER rm -f caliper-smoke >/dev/null 2>&1 || true' EXIT
$DOCKER run -d --name caliper-smoke --network host -e CALIPER_HOST=127.0.0.1 -e CALIPER_PORT="$port" \
  -e CALIPER_WORKERS=1 "$IMAGE" >/dev/null
wait_ready "http://127.0.0.1:$port" caliper-smoke
key=$($DOCKER exec caliper-smoke caliper keys create --project smoke --role write)
exercise "http://127.0.0.1:$port" "$key"
for _ in $(seq 1 60); do
  health=$($DOCKER inspect --format '{{.State.Health.Status}}' caliper-smoke)
  [ "$health" = healthy ] && break
  sleep 1
done
[ "$health" = healthy ] || { say "healthcheck: $health"; exit 1; }
$DOCKER rm -f caliper-smoke >/dev/null

say "compose: Postgres, the migration step, the API"
compose=(docker-compose)
$DOCKER compose version >/dev/null 2>&1 && compose=($DOCKER compose)
project=caliper-smoke
port=$(free_port)
trap '"${compose[@]}" -p "$project" down -v >/dev/null 2>&1 || true' EXIT
CALIPER_PORT=$port "${compose[@]}" -p "$project" up -d --no-build >/dev/null 2>&1 \
  || { "${compose[@]}" -p "$project" logs 2>&1 | tail -40; exit 1; }
api=$("${compose[@]}" -p "$project" ps -q api)
wait_ready "http://127.0.0.1:$port" "$api"
key=$($DOCKER exec "$api" caliper keys create --project smoke --role write)
exercise "http://127.0.0.1:$port" "$key"
say "passed"
