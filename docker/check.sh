#!/usr/bin/env bash
# Check a built image (bash docker/build.sh first) the way a user runs it: as the image's
# non-root user, with a host folder mounted at /data, on the CPU:
#   ldpo --version; every command's --help and ldpo-loop's; faiss and torch import; the toy
#   Texture-25 loop at small size (the pipelines' Makefile) writing into the mounted folder,
#   whose files the host user can read; the loop's report; a run under another uid (the
#   calling user's, who has no account in the image); the tests marked `smoke` (this
#   checkout's tests/, mounted read-only, with pytest from the host's pip, never in the image).
# Ends with one line: the image, its size and what passed. Exit 0 when everything passed.
#
#   bash docker/check.sh                    # ldpo:latest
#   bash docker/check.sh --image ldpo:cpu --venv .venv   # also run the same loop in a venv and
#                                           # compare final/labels.csv (sha256)
#   bash docker/check.sh --keep             # keep the mounted folder (printed) for a look
# Engine: docker (daemon answers), podman (when `podman run` works), else buildah run (chroot).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "check.sh: error: $*" >&2; exit 2; }

image=ldpo:latest venv="" keep=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --image) image=${2:?--image needs a name}; shift 2 ;;
    --venv) venv=${2:?--venv needs a folder}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -z $venv || -x $venv/bin/ldpo ]] || die "--venv $venv: no bin/ldpo in it"
# the loop's size and settings (the demo's recipe, smaller), the same in the image and the venv
loop_make=(texture25 T25_CLASSES=4 T25_PER_CLASS=12 T25_SIZE=32 MAX_ITER=2 EPOCHS=1 SEED=0 DEVICE=cpu WORKERS=0)
threads=1

# ---- the engine --------------------------------------------------------------------------------
engine=${LDPO_ENGINE:-}
if [[ -z $engine ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null && podman run --rm --pull=never "$image" true >/dev/null 2>&1; then engine=podman
  elif command -v buildah >/dev/null; then engine=buildah
  else die "no docker (daemon), working podman or buildah to run $image"
  fi
fi
case $engine in
  docker) docker image inspect "$image" >/dev/null 2>&1 || die "$image: no such image (bash docker/build.sh)" ;;
  podman|buildah) buildah inspect --type image "$image" >/dev/null 2>&1 ||
    podman image exists "$image" 2>/dev/null || die "$image: no such image (bash docker/build.sh)" ;;
  *) die "LDPO_ENGINE=$engine: choose docker, podman or buildah" ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/ldpo-check.XXXXXX")   # mounted at /data
side=$(mktemp -d "${TMPDIR:-/tmp}/ldpo-check-side.XXXXXX")   # pytest, the venv's run: not mounted as /data
ctr=""
cleanup() {
  [[ -z $ctr ]] || buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$side"
  if [[ $keep == 1 ]]; then echo "check.sh: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

image_user=$(case $engine in
  docker) docker image inspect -f '{{.Config.User}}' "$image" ;;
  *) buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$image" ;;
esac)
[[ -n $image_user && $image_user != root && $image_user != 0 ]] || die "$image runs as root; it should not"
if [[ $engine == buildah ]]; then
  ctr=$(buildah from --pull-never "$image")
  read -r -a entrypoint <<< "$(buildah inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$image")"
fi

# in_image USER COMMAND...: run COMMAND in the image as USER, through its entrypoint, with the
# mounted folder at /data (the working directory), this checkout's tests/ and pytest read-only.
in_image() {
  local user=$1
  shift
  local mounts=(-v "$work:/data" -v "$root/tests:/src/ldpo/tests:ro" -v "$side/pytest:/opt/pytest:ro")
  case $engine in
    docker|podman)
      "$engine" run --rm --user "$user" "${mounts[@]}" -w /data -e OMP_NUM_THREADS=$threads "$image" "$@" ;;
    buildah)
      buildah run --isolation chroot --user "$user" "${mounts[@]}" --workingdir /data "$ctr" -- \
        "${entrypoint[@]}" env OMP_NUM_THREADS=$threads "$@" ;;
  esac
}

passed=() failed=()
step() {  # step NAME COMMAND...: run it, note the result, go on
  local name=$1
  shift
  echo "check.sh: -- $name" >&2
  if "$@"; then passed+=("$name"); else failed+=("$name"); echo "check.sh: FAILED: $name" >&2; fi
}

# the image's user owns the mounted folder (docker run --user "$(id -u):$(id -g)" is the
# README's way for a user's own folder; this checks the image's own user)
mkdir -p "$side/pytest"
chmod 0777 "$work"   # until the image's user owns it
uid=$(in_image "$image_user" id -u)
chown "$uid" "$work" && chmod 0755 "$work"

version() { local v; v=$(in_image "$image_user" ldpo --version) && echo "$v" && [[ $v == "ldpo "* ]]; }
helps() {
  # shellcheck disable=SC2016  # expanded inside the image
  in_image "$image_user" bash -c '
    set -e
    cmds=$(ldpo --help | sed -n "/^commands:/,\$p" | tail -n +2)
    [ -n "$cmds" ]
    n=0
    for c in $cmds; do "$c" --help > /dev/null; ldpo "$c" --help > /dev/null; n=$((n + 1)); done
    ldpo-loop --help > /dev/null
    make -C /src/ldpo/pipelines -n texture25 OUT=/tmp/x > /dev/null
    echo "$n commands: --help as a command and as ldpo COMMAND; ldpo-loop --help; the Makefile"'
}
imports() {
  in_image "$image_user" python -c '
import faiss, torch, torchvision
print("faiss", faiss.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__,
      "cuda build", torch.version.cuda, "cuda available", torch.cuda.is_available())'
}
loop() {
  in_image "$image_user" make --no-print-directory -C /src/ldpo/pipelines "${loop_make[@]}" OUT=/data/out \
    > "$side/loop.log" 2>&1 || { tail -30 "$side/loop.log" >&2; return 1; }
  grep -E '^(iter|[0-9]+[*]? )' "$side/loop.log" | head -20 >&2 || true
  [[ -s $work/out/texture25/run/final/labels.csv ]] && sha256sum "$work/out/texture25/run/final/labels.csv" | cut -c1-16
}
report() {
  local page=$work/out/texture25/run/report/index.html
  [[ -s $page ]] && grep -q '<html' "$page" && echo "report: $(du -h "$page" | cut -f1) index.html"
}
readable() {  # every file the loop wrote can be read by the host user: owned by them, or o+r
  local bad
  bad=$(find "$work/out" \( -type f -o -type d \) ! -user "$(id -u)" ! -perm -o+r -print | head -5)
  [[ -z $bad ]] || { echo "not readable by the host user: $bad" >&2; return 1; }
  echo "$(find "$work/out" -type f | wc -l) files, owner uid $(stat -c %u "$work/out/texture25/run/final/labels.csv"), all world-readable"
}
any_uid() {  # the calling user's uid, which has no account in the image: HOME, /data, a stage
  mkdir -p "$work/uid" && chown 4321:4321 "$work/uid"
  # shellcheck disable=SC2016  # expanded inside the image
  in_image 4321:4321 bash -c 'cd uid && touch "$HOME/w" && ldpo toy-data texture25 --out t --classes 2 --per-class 2 --size 16 --no-sheet -q && ls t/images.h5' &&
    [[ $(stat -c %u "$work/uid/t/images.h5") == 4321 ]]
}
smoke() {
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$side/pytest" \
    --only-binary=:all: --python-version 3.11 --no-compile pytest > "$side/pip.log" 2>&1 ||
    { tail -5 "$side/pip.log" >&2; echo "pytest: the host's pip could not fetch it" >&2; return 1; }
  in_image "$image_user" env PYTHONPATH=/opt/pytest PYTHONDONTWRITEBYTECODE=1 timeout 180 \
    bash -c 'cd /src/ldpo && python -m pytest -q -m smoke -p no:cacheprovider tests' > "$side/smoke.log" 2>&1 ||
    { tail -30 "$side/smoke.log" >&2; return 1; }
  tail -1 "$side/smoke.log"
}
# an Apptainer definition's section (%runscript, %test), as apptainer runs it: with /bin/sh
section() { awk -v want="%$1" '/^%/ {on = ($1 == want); next} on' "$root/docker/ldpo.def"; }
apptainer_def() {  # docker/ldpo.def: built from the image (bootstrap, sections); its %runscript
  # and %test run in the image as apptainer would run them (apptainer itself: see README)
  grep -qx 'Bootstrap: docker-archive' "$root/docker/ldpo.def" || { echo "ldpo.def: not built from a docker-archive" >&2; return 1; }
  local runscript test
  runscript=$(section runscript) test=$(section test)
  [[ -n $runscript && -n $test ]] || { echo "ldpo.def: no %runscript or %test" >&2; return 1; }
  local help
  help=$(in_image "$image_user" sh -c "$runscript" runscript ldpo-loop --help) || return 1
  [[ $help == *--max-iter* ]] || { echo "%runscript ldpo-loop --help: not the loop's help" >&2; return 1; }
  if ! in_image "$image_user" sh -c "$test" > "$side/def-test.log" 2>&1; then
    tail -20 "$side/def-test.log" >&2
    return 1
  fi
  echo "%runscript ldpo-loop --help and %test ran in the image: $(grep '^faiss' "$side/def-test.log")"
}
same_as_venv() {
  local here=$side/venv-out
  OMP_NUM_THREADS=$threads PATH="$(cd "$venv" && pwd)/bin:$PATH" \
    make --no-print-directory -C "$root/pipelines" "${loop_make[@]}" OUT="$here" > "$side/venv.log" 2>&1 ||
    { tail -20 "$side/venv.log" >&2; return 1; }
  local a b
  a=$(sha256sum < "$work/out/texture25/run/final/labels.csv" | cut -d' ' -f1)
  b=$(sha256sum < "$here/texture25/run/final/labels.csv" | cut -d' ' -f1)
  echo "final/labels.csv sha256: image ${a:0:16}, venv ${b:0:16}"
  [[ $a == "$b" ]]
}

start=$SECONDS
step version version
step help helps
step imports imports
step loop loop
step report report
step readable readable
step any-uid any_uid
step smoke smoke
step apptainer-def apptainer_def
[[ -z $venv ]] || step same-as-venv same_as_venv

size=$(case $engine in
  docker) docker image inspect -f '{{.Size}}' "$image" ;;
  podman|buildah) podman image inspect --format '{{.Size}}' "$image" 2>/dev/null ||
    buildah images --format '{{.Size}}' --filter "reference=$image" | head -1 ;;
esac)
[[ $size =~ ^[0-9]+$ ]] && size=$(numfmt --to=si --suffix=B "$size")
summary="check.sh: $image ($size, $engine, $((SECONDS - start)) s): passed ${#passed[@]}/$((${#passed[@]} + ${#failed[@]}))"
summary+=" [${passed[*]}]"
[[ ${#failed[@]} -eq 0 ]] || summary+="; FAILED [${failed[*]}]"
echo "$summary"
[[ ${#failed[@]} -eq 0 ]]
