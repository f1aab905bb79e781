#!/usr/bin/env bash
# Build ldpo's image (docker/Dockerfile) with docker, podman or buildah: the first that works.
#
#   bash docker/build.sh                       # ldpo:latest, EXTRA=gpu (faiss-gpu)
#   bash docker/build.sh --extra cpu --tag ldpo:cpu
#   bash docker/build.sh --base nvidia/cuda:12.6.3-runtime-ubuntu22.04
#   bash docker/build.sh --archive out/ldpo-image.tar   # and export it for apptainer (docker-archive)
#
# Base: --base, else Debian 12 slim from the registry; where no registry answers, a local
# Debian 12 base (localhost/ldpo-base:bookworm) built once with mmdebstrap from the Debian
# mirror, without the host's /etc/hostname and /etc/resolv.conf.
# pip: the host's effective settings (`pip config list`: files and PIP_* variables) go to the
# build as the secret `pipconf` (and its CA bundle as `pipca`), never into a layer; the local
# folders and files they name (find-links, file:// indexes, constraints) are served read-only
# on the host's loopback while the build runs (its RUN steps use the host's network), so no
# host folder is mounted into the image. Engine: LDPO_ENGINE=docker|podman|buildah to choose.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "build.sh: error: $*" >&2; exit 2; }

tag=ldpo:latest extra=gpu base="" archive=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --tag) tag=${2:?--tag needs a name}; shift 2 ;;
    --extra) extra=${2:?--extra needs gpu or cpu}; shift 2 ;;
    --base) base=${2:?--base needs an image}; shift 2 ;;
    --archive) archive=${2:?--archive needs a file}; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $extra == gpu || $extra == cpu ]] || die "--extra $extra: choose gpu or cpu"
default_base=docker.io/library/debian:bookworm-slim
local_base=localhost/ldpo-base:bookworm

# ---- the engine ---------------------------------------------------------------------------
engine=${LDPO_ENGINE:-}
if [[ -z $engine ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  elif command -v buildah >/dev/null; then engine=buildah
  else die "no docker (with a running daemon), podman or buildah; install one (Debian: apt-get install buildah mmdebstrap)"
  fi
fi
case $engine in docker|podman|buildah) command -v "$engine" >/dev/null || die "LDPO_ENGINE=$engine: not installed" ;;
  *) die "LDPO_ENGINE=$engine: choose docker, podman or buildah" ;; esac
image_exists() {
  case $engine in
    docker) docker image inspect "$1" >/dev/null 2>&1 ;;
    podman) podman image exists "$1" ;;
    buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
  esac
}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ldpo-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# ---- the base -------------------------------------------------------------------------------
make_local_base() {
  command -v mmdebstrap >/dev/null ||
    die "no registry answers and mmdebstrap is missing (apt-get install mmdebstrap), or pass --base IMAGE"
  echo "build.sh: no registry; building $local_base with mmdebstrap (Debian 12 minbase)" >&2
  # slim like the registry's debian:bookworm-slim: no manuals or docs (the path-excludes stay in
  # the image for later apt installs); the host's hostname and resolver are not copied in
  # shellcheck disable=SC2016  # $1 is the hook's argument (the new root), for mmdebstrap's shell
  mmdebstrap --variant=minbase --quiet \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -f "$1/etc/hostname" "$1/etc/resolv.conf"' \
    bookworm "$tmp/rootfs.tar"
  case $engine in
    docker) docker import --change 'CMD ["bash"]' --message "mmdebstrap bookworm minbase" "$tmp/rootfs.tar" "$local_base" ;;
    podman) podman import --change CMD=bash --message "mmdebstrap bookworm minbase" "$tmp/rootfs.tar" "$local_base" ;;
    buildah)
      ctr=$(buildah from scratch)
      buildah add "$ctr" "$tmp/rootfs.tar" / >/dev/null
      buildah config --cmd bash --created-by "mmdebstrap bookworm minbase" "$ctr"
      buildah commit --rm "$ctr" "$local_base" >/dev/null ;;
  esac
  rm -f "$tmp/rootfs.tar"
}
if [[ -z $base ]]; then
  if image_exists "$default_base" || timeout 120 "$engine" pull -q "$default_base" >/dev/null 2>&1; then
    base=$default_base
  else
    image_exists "$local_base" || make_local_base
    base=$local_base
  fi
fi

# ---- pip's settings, for the build only ------------------------------------------------------
# pip.conf from `pip config list`; the local folders it names are served on the loopback
secrets=() server=""
: > "$tmp/pip.conf"
if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m pip config list 2>/dev/null | python3 "$root/docker/pipconf.py" "$tmp" "http://127.0.0.1:$port" ||
    die "could not read pip's settings"
  if [[ -n $(ls -A "$tmp/serve") ]]; then
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$tmp/serve" > "$tmp/serve.log" 2>&1 &
    server=$!
    trap 'kill "$server" 2>/dev/null; rm -rf "$tmp"' EXIT
    for _ in $(seq 50); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break; sleep 0.2; done
  fi
fi
[[ -f $tmp/ca.crt ]] || : > "$tmp/ca.crt"
secrets+=(--secret "id=pipconf,src=$tmp/pip.conf" --secret "id=pipca,src=$tmp/ca.crt")

# ---- build ------------------------------------------------------------------------------------
args=(-f "$root/docker/Dockerfile" -t "$tag" --build-arg "BASE=$base" --build-arg "EXTRA=$extra" "${secrets[@]}")
echo "build.sh: $engine building $tag (BASE=$base, EXTRA=$extra)" >&2
start=$SECONDS
case $engine in
  docker) DOCKER_BUILDKIT=1 docker build --network host "${args[@]}" "$root" ;;
  podman) podman build --isolation chroot --network host --layers --pull=never "${args[@]}" "$root" ;;
  buildah) buildah bud --isolation chroot --network host --layers --pull-never "${args[@]}" "$root" ;;
esac
echo "build.sh: built $tag in $((SECONDS - start)) s" >&2

if [[ -n $archive ]]; then
  mkdir -p "$(dirname "$archive")"
  rm -f "$archive"
  case $engine in
    docker) docker save -o "$archive" "$tag" ;;
    podman) podman save --format docker-archive -o "$archive" "$tag" ;;
    buildah) buildah push "$tag" "docker-archive:$archive:$tag" ;;
  esac
  echo "build.sh: exported $tag to $archive (docker-archive; apptainer build ldpo.sif docker/ldpo.def)" >&2
fi
