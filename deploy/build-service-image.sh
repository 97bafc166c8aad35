#!/usr/bin/env bash
# Builds the orchestrator's image (deploy/Dockerfile) with no registry and no index, in
# three idempotent steps, as deploy/build-images.sh builds the run image:
#   1. base   assistant-base:bookworm (Debian's python3 3.11), imported by build-images.sh,
#             which this runs first when the base is missing (runs need its run image too)
#   2. wheels build/service-wheelhouse: the project's dependencies (pyproject.toml) and its
#             build backend, fetched by the host's pip for the base's Python (3.11), each at
#             its version in the lock (constraints.txt)
#   3. image  assistant:latest; docker's layer cache keeps the dependencies' layer while
#             only the project's code changes
# Each step is skipped when its output is already there, so re-running costs seconds.
# With a registry and an index, `docker build -f deploy/Dockerfile -t assistant:latest .`
# does the same from python:3.11-slim-bookworm.
#
#   ASSISTANT_SERVICE_IMAGE  tag of the image (default assistant:latest)
#   ASSISTANT_BASE_IMAGE     tag of the imported base (default assistant-base:bookworm)
#   PYTHON                   the host's Python (>= 3.11) whose pip fetches the wheels
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${ASSISTANT_SERVICE_IMAGE:-assistant:latest}
base_tag=${ASSISTANT_BASE_IMAGE:-assistant-base:bookworm}
python=${PYTHON:-python3}
wheelhouse=build/service-wheelhouse
lock=constraints.txt
target_python=3.11 # bookworm's python3

say() { printf '== %s\n' "$*"; }
die() { printf 'build-service-image: error: %s\n' "$*" >&2; exit 1; }
took() { printf '== %s done in %ss\n' "$1" "$((SECONDS - $2))"; }

docker info >/dev/null 2>&1 || die "no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}"

build_base() {
  if docker image inspect "$base_tag" >/dev/null 2>&1; then
    say "base: $base_tag exists, skipping"
    return 0
  fi
  say "base: $base_tag is missing: deploy/build-images.sh makes it (and the run image)"
  ASSISTANT_BASE_IMAGE=$base_tag deploy/build-images.sh
}

build_wheelhouse() {
  local arch stamp want start=$SECONDS requirements
  arch=$(uname -m)
  # the dependencies as pyproject.toml declares them, and the build backend it names
  mapfile -t requirements < <("$python" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    data = tomllib.load(f)
print("\n".join(data["project"]["dependencies"] + data["build-system"]["requires"]))')
  stamp="$wheelhouse/.requirements"
  want="$(printf '%s;' "${requirements[@]}") cp${target_python/./} $arch lock $(sha256sum "$lock" | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "wheels: $wheelhouse is up to date, skipping"
    return 0
  fi
  local platforms=(--platform "manylinux2014_$arch")
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  say "wheels: pip download ${#requirements[@]} requirements (Python $target_python, $arch) into $wheelhouse"
  rm -rf "$wheelhouse"
  mkdir -p "$wheelhouse"
  "$python" -m pip download --disable-pip-version-check --progress-bar off --quiet \
    --python-version "$target_python" --only-binary=:all: "${platforms[@]}" \
    -c "$lock" -d "$wheelhouse" "${requirements[@]}" || die "wheels: pip download failed"
  printf '%s\n' "$want" >"$stamp"
  say "wheels: $(find "$wheelhouse" -name '*.whl' | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1)"
  took wheels "$start"
}

build_image() {
  local start=$SECONDS
  say "image: docker build $tag (base $base_tag, wheels $wheelhouse)"
  # The context is exactly what the Dockerfile copies, streamed as a tar (the repo root
  # also holds .venv and .git, which would cost seconds to send on every build).
  tar -c --exclude=__pycache__ --exclude='*.pyc' --exclude="$wheelhouse/.requirements" \
    pyproject.toml README.md constraints.txt assistant commands storage deploy/Dockerfile \
    "$wheelhouse" \
    | docker build --quiet --network host --force-rm -f deploy/Dockerfile \
      --build-arg "BASE_IMAGE=$base_tag" --build-arg "WHEELS=$wheelhouse" -t "$tag" - >/dev/null \
    || die "image: docker build failed"
  took image "$start"
}

total=$SECONDS
build_base
build_wheelhouse
build_image
say "ready: $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')) in $((SECONDS - total))s"
