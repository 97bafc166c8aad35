#!/usr/bin/env bash
# Builds the run image with no registry at all, in three idempotent steps:
#   1. base   assistant-base:bookworm, imported from a Debian rootfs (debootstrap)
#   2. wheels build/wheelhouse: torch (CPU build where the host's pip offers it), numpy,
#             scikit-learn, aiohttp (the benchmark client), prometheus-client (the
#             benchmark reads the server's /metrics with its parser), fetched by the host's pip
#             for the base's Python (3.11), each at its version in the lock (constraints.txt)
#   3. image  assistant-run:latest from deploy/run-image/Dockerfile
# Each step is skipped when its output is already there, so re-running costs seconds.
# A GPU host with a registry builds the Dockerfile from its default base instead (pip takes
# the lock's torch, its CUDA build, from the index).
#
#   ASSISTANT_RUN_IMAGE   tag of the run image (default assistant-run:latest)
#   ASSISTANT_BASE_IMAGE  tag of the imported base (default assistant-base:bookworm)
#   DEBIAN_MIRROR         debootstrap's mirror (default http://deb.debian.org/debian)
#   PYTHON                the host's Python whose pip fetches the wheels (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

run_tag=${ASSISTANT_RUN_IMAGE:-assistant-run:latest}
base_tag=${ASSISTANT_BASE_IMAGE:-assistant-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
python=${PYTHON:-python3}
wheelhouse=build/wheelhouse
# versions: the lock's (constraints.txt), here and in the image's own pip install
requirements=(torch numpy scikit-learn aiohttp prometheus-client)
lock=constraints.txt
target_python=3.11 # bookworm's python3

say() { printf '== %s\n' "$*"; }
die() { printf 'build-images: error: %s\n' "$*" >&2; exit 1; }
took() { printf '== %s done in %ss\n' "$1" "$((SECONDS - $2))"; }

if ! command -v docker >/dev/null 2>&1; then
  die "no docker client on PATH; install and start an engine with scripts/docker-engine up"
fi
if ! docker info >/dev/null 2>&1; then
  die "no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}; start one with scripts/docker-engine up"
fi

build_base() {
  if docker image inspect "$base_tag" >/dev/null 2>&1; then
    say "base: $base_tag exists, skipping"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "base: debootstrap needs root (run this script as root once)"
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "base: installing debootstrap (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  local start=$SECONDS rootfs
  rootfs=$(mktemp -d)  # debootstrap target, removed below
  # shellcheck disable=SC2064 # expand now: the path is fixed
  trap "rm -rf '$rootfs'" EXIT
  say "base: debootstrap bookworm (minbase + python3) from $mirror into $rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log" >&2; die "base: debootstrap failed (log: $rootfs.log)"; }
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  say "base: importing as $base_tag"
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$base_tag" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  took base "$start"
}

build_wheelhouse() {
  local arch stamp want start=$SECONDS
  arch=$(uname -m)
  stamp="$wheelhouse/.requirements"
  want="${requirements[*]} cp${target_python/./} $arch lock $(sha256sum "$lock" | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "wheels: $wheelhouse has ${requirements[*]}, skipping"
    return 0
  fi
  "$python" -m pip --version >/dev/null 2>&1 || die "wheels: $python has no pip"
  # Wheels for the base's Python, not the host's: any manylinux glibc up to bookworm's 2.36.
  local platforms=(--platform "manylinux2014_$arch")
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  say "wheels: pip download ${requirements[*]} (Python $target_python, $arch) into $wheelhouse"
  mkdir -p "$wheelhouse"
  "$python" -m pip download --disable-pip-version-check --progress-bar off \
    --python-version "$target_python" --only-binary=:all: "${platforms[@]}" \
    -c "$lock" -d "$wheelhouse" "${requirements[@]}" || die "wheels: pip download failed"
  ls "$wheelhouse"/torch-*.whl >/dev/null 2>&1 || die "wheels: no torch wheel in $wheelhouse"
  printf '%s\n' "$want" >"$stamp"
  say "wheels: $(find "$wheelhouse" -name '*.whl' | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1)"
  took wheels "$start"
}

build_image() {
  local start=$SECONDS
  say "image: docker build $run_tag (base $base_tag, wheels $wheelhouse)"
  # The context is exactly what the Dockerfile copies, streamed as a tar: the repo root
  # also holds .venv and .git, which would cost seconds to send on every build.
  tar -c --exclude=__pycache__ --exclude='*.pyc' --exclude="$wheelhouse/.requirements" \
    assistant/__init__.py assistant/jobs deploy/run-image constraints.txt "$wheelhouse" \
    | docker build --network host --force-rm -f deploy/run-image/Dockerfile \
      --build-arg "BASE_IMAGE=$base_tag" --build-arg "WHEELS=$wheelhouse" \
      -t "$run_tag" -
  took image "$start"
}

total=$SECONDS
build_base
build_wheelhouse
build_image
say "ready: $run_tag ($(docker image inspect --format '{{.Size}}' "$run_tag" | awk '{printf "%.0f MB", $1/1e6}')) in $((SECONDS - total))s"
