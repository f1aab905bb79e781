#!/usr/bin/env bash
# One LDPO run, Algorithm 1 of Wang et al. (WACV 2017): featurize -> [encode] -> cluster -> converge,
# then finetune on those labels, featurize, [encode], cluster, converge, ... until converge's
# verdict says stop (or --max-iter), then probs -> hierarchy [-> keywords] -> report.
#
# The loop is only the order of the stages. Its options, their LDPO_* environment defaults and
# --help, the run record (resume, --restart-from, --fresh), the work folder's layout and every
# stage's command line come from ldpo's Python: `ldpo _workdir ...` (ldpo.common.loop: command,
# workdir, loop_options, loop_plan) prints shell assignments that the loop evals. See --help.
#
# Example:
#   pipelines/ldpo-loop.sh --images toy/images.h5 --work runs/t25 --truth toy/truth.csv \
#       --k 25 --max-iter 6 --epochs 3
# shellcheck disable=SC2154  # (variables assigned by `plan`: the eval of ldpo _workdir's assignments)
set -Eeuo pipefail

# One line, whatever a path in it holds: a newline is written as \n.
die() { local message="ldpo-loop: error: $*"; echo "${message//$'\n'/\\n}" >&2; exit 2; }
# Any other command that fails stops the loop with 2 too (never 1, which callers read as "not
# converged"); a command substitution's subshell exits quietly, its caller says it.
on_error() {
  (( BASH_SUBSHELL > 0 )) || echo "ldpo-loop: error: a step failed (exit status $1, ldpo-loop.sh line $2); stopping" >&2
  exit 2
}
trap 'on_error $? $LINENO' ERR

args=("$@")
read -r -a ldpo <<< "${LDPO_BIN:-ldpo}"
command -v "${ldpo[0]}" >/dev/null ||
  { echo "ldpo-loop: error: ${ldpo[0]}: command not found (activate ldpo's environment, or set LDPO_BIN)" >&2; exit 2; }
# `ldpo _workdir WHAT`: the loop's bookkeeping in Python; its shell assignments are evaluated here.
plan() {
  local text
  text=$("${ldpo[@]}" _workdir "$@" -- "${args[@]}") || exit 2
  eval "$text"
}
plan options  # --help, or: work, lock, max_iter, early_stop, init_labels, quiet
log() { [[ $quiet == 1 ]] || echo "ldpo-loop: $*" >&2; }

# A stage that fails stops the loop with exit 2, whatever status it returned (1 included:
# converge's "go on" is read from what it prints, never from a status).
stage() {
  local name=$1 status=0
  shift
  "$@" || status=$?
  (( status == 0 )) || die "$name failed (exit status $status); stopping (rerun the same command to resume)"
}
# step NAME OUTPUT COMMAND...: run a stage unless its output exists or there is no command.
step() {
  local name=$1 output=$2
  shift 2
  [[ $# -gt 0 && ! -e $output ]] || return 0
  log "$where: $name"
  stage "$name" "$@"
}

# ---- one loop at a time in WORK --------------------------------------------------------------
# An flock on WORK/.ldpo-loop.lock, held by this shell and the stages it starts: the kernel
# releases it when the last of them ends, however it ends, so a killed loop blocks nobody.
mkdir -p -- "$work"
take_lock() {
  if command -v flock > /dev/null; then
    flock -n "$1"
  else  # the same lock without util-linux (macOS): any Python's fcntl.flock on the shared descriptor
    python3 -c 'import fcntl, sys; fcntl.flock(int(sys.argv[1]), fcntl.LOCK_EX | fcntl.LOCK_NB)' "$1" 2> /dev/null
  fi
}
# The shell cannot open without following a link: `plan lock` makes the file (O_NOFOLLOW) or refuses
# one that is a link, a FIFO or anything but a regular file; `plan hold` checks that the descriptor
# opened here is that file before it writes who holds the lock.
plan lock
exec {lock_fd}>> "$lock" || die "$lock: cannot open the work folder's lock file"
if ! take_lock "$lock_fd"; then
  holder=
  read -r holder < "$lock" || true
  die "$work: another ldpo-loop is running in this work folder (${holder:-its process is unknown}); wait for it to end, or stop it"
fi
plan hold "$lock_fd" "$$"

# ---- the run record: resume, --restart-from, --fresh, or refuse ----------------------------------
plan begin

# ---- converge: sets $converged to 1 (stop) or 0 (go on) ------------------------------------------
# A resume takes the verdict an earlier run recorded, so a finished run changes no file.
check() {
  local status=0
  plan check "$1"  # converged=0|1 when recorded, else converged= and the converge command
  [[ -z $converged ]] || return 0
  "${converge[@]}" > "$converge_txt" || status=$?
  plan verdict "$1" "$status"
}

# ---- iteration 0: labels from the initial model, or the given initial labels --------------------
# ---- iterations 1..max: finetune on the previous labels, featurize, [encode], cluster, converge --
t=0
while :; do
  plan iteration "$t"  # name, dir, model, features, encoded, labels, converge_txt and the stage commands
  where=$name
  mkdir -p -- "$dir"
  if [[ -n $init_labels ]] && (( t == 0 )); then
    [[ -e $labels ]] || cp -- "$init_labels" "$labels"
    log "$name: initial labels from $init_labels"
  fi
  step "finetune on the previous labels" "$model" "${finetune[@]}"
  step featurize "$features" "${featurize[@]}"
  step encode "$encoded" "${encode[@]}"
  step cluster "$labels" "${cluster[@]}"
  check "$t"
  if (( t > 0 )) && [[ $converged == 1 && $early_stop == 1 ]]; then
    log "converged at iteration $t (converge's verdict)"
    break
  fi
  (( t < max_iter )) || break
  t=$((t + 1))
done

# ---- the final model and labels; the category tree and keywords from them; the report ----------
(( t > 0 )) || log "no fine-tuning iteration ran (--max-iter 0): final labels are iteration 0's; no tree"
plan final "$t"  # copies final/model.pt and final/labels.csv; the commands after the loop
where=final
step "class probabilities" "$probs_h5" "${probs[@]}"
if [[ ${#hierarchy[@]} -gt 0 && ! -e $tree_json ]]; then
  log "final: hierarchy"
  stage hierarchy "${hierarchy[@]}" > "$levels_txt"
fi
step keywords "$keywords_html" "${keywords[@]}"
step report "$report_html" "${report[@]}"

"${ldpo[@]}" _workdir summary "$t" -- "${args[@]}" || exit 2  # the table and where the results are
