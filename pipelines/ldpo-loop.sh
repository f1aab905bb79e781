#!/usr/bin/env bash
# One LDPO run: [finetune] -> featurize -> [encode] -> cluster -> converge, looped until
# `converge` prints converged=1 (or --max-iter), then probs -> hierarchy [-> keywords] -> report.
#
# Every option has an environment-variable default (LDPO_*), so a SLURM script or a
# Makefile can set them once. Every stage the loop calls can be replaced without editing
# this script: set FEATURIZE_CMD, FINETUNE_CMD, ENCODE_CMD, CLUSTER_CMD, CONVERGE_CMD,
# HIERARCHY_CMD, KEYWORDS_CMD or REPORT_CMD to a command that takes the same arguments and
# writes the same files (see "Swapping a stage" in the README). Options left unset are
# resolved by the stages from one recipe table (ldpo.common.models.RECIPES): this script
# decides no default a stage could get wrong.
#
# The first run writes WORK/run.json (settings, stage commands, input checksums). A rerun
# with the same record resumes (a step whose output exists is skipped, and a finished run
# changes no file); with other settings or inputs it exits 2 naming what differs, unless
# --restart-from iter-N (recompute from iteration N on) or --fresh (start over) is given.
# Iterations without a valid run.json are refused the same way. --fresh and --restart-from
# delete only what the loop wrote: a folder they would delete that holds anything else is
# refused, and nothing is deleted. One loop at a time works in WORK (a lock, released when
# the loop ends or dies); a second one exits 2 naming the first one's process.
#
# Exit status: 0 done; 2 anything that stopped the run (a usage error, a refused work folder,
# a failed stage, whatever status it returned).
#
# Example:
#   pipelines/ldpo-loop.sh --images toy/images.h5 --work runs/t25 --truth toy/truth.csv \
#       --k 25 --max-iter 6 --epochs 3
set -Eeuo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  cat <<'EOF'
Options (environment default in brackets):
  --images STORE        images store (.h5/.zarr)                   [LDPO_IMAGES]
  --work DIR            work folder: iter-NN/, final/, history.csv [LDPO_WORK]
  --truth CSV           ground-truth labels, for reporting only     [LDPO_TRUTH]
  --reports CSV         extract-keyimages' OUT/reports.csv (scrubbed report text),
                        with --manifest                             [LDPO_REPORTS]
  --manifest CSV        manifest from extract-keyimages             [LDPO_MANIFEST]
  --arch NAME           CNN architecture, or timm:NAME (stage default:
                        resnet18 from random init, alexnet from weights) [LDPO_ARCH]
  --layer NAME          feature layer clustered (multiscale = every stage
                        pooled and concatenated; avgpool, fc7, conv5, ...;
                        with --encode the stage's last conv layer) [LDPO_LAYER=multiscale]
  --encode fv|vlad|avg|max|patches|none  encode a conv layer, or (patches)
                        mid-level elements re-mined from image patches
                        with the previous labels each iteration   [LDPO_ENCODE=none]
  --method scan|kmeans|rim  clustering (scan: neighbour-consistent heads
                        started from k-means; see the README's Discovery) [LDPO_METHOD=scan]
  --k K                 clusters (rim: the over-segmentation)       [LDPO_K=25]
  --metric nmi|purity   convergence measure                         [LDPO_METRIC=nmi]
  --threshold X         stop when metric(labels_t, labels_t-1) >= X [LDPO_THRESHOLD=0.9]
  --max-iter N          at most N fine-tuning iterations            [LDPO_MAX_ITER=6]
  --no-early-stop       run all --max-iter iterations (DeepMCAT)    [LDPO_NO_EARLY_STOP=0]
  --init SPEC           random | weights:PATH | checkpoint:PATH     [LDPO_INIT=random]
  --init-labels CSV     start from these labels (e.g. topic-label)  [LDPO_INIT_LABELS]
  --epochs E            fine-tuning epochs per iteration            [LDPO_EPOCHS=3]
  --lr X                fine-tuning learning rate (stage default)   [LDPO_LR]
  --balanced            class-balanced sampling in finetune         [LDPO_BALANCED=0]
  --split SPEC          finetune split, 70/10/20 or none            [LDPO_SPLIT=70/10/20]
  --input-size N        CNN input side in pixels (stage default: the
                        store's side up to 224 from random init, else 224) [LDPO_INPUT_SIZE]
  --normalize imagenet|zscore|timm  input normalization (zscore = per image;
                        timm = the timm config's mean/std; stage default zscore
                        from random init, else imagenet, timm for timm:*) [LDPO_NORMALIZE]
  --input-filter none|sobel|gray-sobel  fixed filter before the CNN (kept
                        in its checkpoints)                          [LDPO_INPUT_FILTER=none]
  --tree-affinity lift|confusion|centroids|reports  the category tree's affinity
                        (hierarchy --affinity; centroids passes the final model's
                        features, reports needs --reports and --manifest) [LDPO_TREE_AFFINITY=lift]
  --tree-preference Q   hierarchy --preference: affinity propagation's preference
                        quantile (0.5 = the paper's median; higher = smaller
                        groups per level)                             [LDPO_TREE_PREFERENCE=0.5]
                        Changing a --tree-* setting on a finished run remakes only
                        the tree and the report.
  --batch-size N                                                    [LDPO_BATCH_SIZE=64]
  --device auto|cpu|cuda                                            [LDPO_DEVICE=auto]
  --seed S                                                          [LDPO_SEED=0]
  --workers N           data-loading workers                        [LDPO_WORKERS=0]
  --amp                 speed over bit-reproducibility in finetune and featurize:
                        bfloat16, channels-last, cuDNN autotuning    [LDPO_AMP=0]
  --restart-from iter-N  keep iterations < N, recompute the rest with these settings
  --fresh               delete this work folder's results and start over
  -h, --help
Extra arguments for one stage (word-split): FEATURIZE_ARGS, FINETUNE_ARGS, ENCODE_ARGS,
CLUSTER_ARGS, e.g. CLUSTER_ARGS="--lam 1e-5" for RIM with hundreds of categories.
Stage commands (to swap a stage): FEATURIZE_CMD, FINETUNE_CMD, ENCODE_CMD, CLUSTER_CMD,
CONVERGE_CMD, HIERARCHY_CMD, KEYWORDS_CMD, REPORT_CMD (default "ldpo NAME"; LDPO_BIN sets "ldpo").
EOF
}

# One line, whatever a path in it holds: a newline is written as \n.
die() { local message="ldpo-loop: error: $*"; echo "${message//$'\n'/\\n}" >&2; exit 2; }
# Any other command that fails stops the loop with 2 too (never 1, which callers read as "not
# converged"); a command substitution's subshell exits quietly, its caller says it.
on_error() {
  local status=$1 line=$2
  (( BASH_SUBSHELL > 0 )) || echo "ldpo-loop: error: a step failed (exit status $status, ldpo-loop.sh line $line); stopping" >&2
  exit 2
}
trap 'on_error $? $LINENO' ERR
log() { [[ ${LDPO_QUIET:-0} == 1 ]] || echo "ldpo-loop: $*" >&2; }

images=${LDPO_IMAGES:-}
work=${LDPO_WORK:-}
truth=${LDPO_TRUTH:-}
reports=${LDPO_REPORTS:-}
manifest=${LDPO_MANIFEST:-}
arch=${LDPO_ARCH:-}
layer=${LDPO_LAYER:-}
encode=${LDPO_ENCODE:-none}
method=${LDPO_METHOD:-scan}
k=${LDPO_K:-25}
metric=${LDPO_METRIC:-nmi}
threshold=${LDPO_THRESHOLD:-0.9}
max_iter=${LDPO_MAX_ITER:-6}
no_early_stop=${LDPO_NO_EARLY_STOP:-0}
init=${LDPO_INIT:-random}
init_labels=${LDPO_INIT_LABELS:-}
epochs=${LDPO_EPOCHS:-3}
lr=${LDPO_LR:-}
balanced=${LDPO_BALANCED:-0}
amp=${LDPO_AMP:-0}
split=${LDPO_SPLIT:-70/10/20}
input_size=${LDPO_INPUT_SIZE:-}
normalize=${LDPO_NORMALIZE:-}
input_filter=${LDPO_INPUT_FILTER:-none}
tree_affinity=${LDPO_TREE_AFFINITY:-lift}
tree_preference=${LDPO_TREE_PREFERENCE:-0.5}
batch_size=${LDPO_BATCH_SIZE:-64}
device=${LDPO_DEVICE:-auto}
seed=${LDPO_SEED:-0}
workers=${LDPO_WORKERS:-0}
restart_from=
fresh=0

# an option's value: present, and not the next option
value() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --images) value "$@"; images=$2; shift ;;
    --work) value "$@"; work=$2; shift ;;
    --truth) value "$@"; truth=$2; shift ;;
    --reports) value "$@"; reports=$2; shift ;;
    --manifest) value "$@"; manifest=$2; shift ;;
    --arch) value "$@"; arch=$2; shift ;;
    --layer) value "$@"; layer=$2; shift ;;
    --encode) value "$@"; encode=$2; shift ;;
    --method) value "$@"; method=$2; shift ;;
    --k) value "$@"; k=$2; shift ;;
    --metric) value "$@"; metric=$2; shift ;;
    --threshold) value "$@"; threshold=$2; shift ;;
    --max-iter) value "$@"; max_iter=$2; shift ;;
    --no-early-stop) no_early_stop=1 ;;
    --init) value "$@"; init=$2; shift ;;
    --init-labels) value "$@"; init_labels=$2; shift ;;
    --epochs) value "$@"; epochs=$2; shift ;;
    --lr) value "$@"; lr=$2; shift ;;
    --balanced) balanced=1 ;;
    --amp) amp=1 ;;
    --split) value "$@"; split=$2; shift ;;
    --input-size) value "$@"; input_size=$2; shift ;;
    --normalize) value "$@"; normalize=$2; shift ;;
    --input-filter) value "$@"; input_filter=$2; shift ;;
    --tree-affinity) value "$@"; tree_affinity=$2; shift ;;
    --tree-preference) value "$@"; tree_preference=$2; shift ;;
    --batch-size) value "$@"; batch_size=$2; shift ;;
    --device) value "$@"; device=$2; shift ;;
    --seed) value "$@"; seed=$2; shift ;;
    --workers) value "$@"; workers=$2; shift ;;
    --restart-from) value "$@"; restart_from=$2; shift ;;
    --fresh) fresh=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

[[ -n $images ]] || die "--images is required (see --help)"
[[ -n $work ]] || die "--work is required (see --help)"
[[ -e $images ]] || die "$images: no such images store"
[[ -z $truth || -f $truth ]] || die "$truth: no such truth file"
[[ -z $init_labels || -f $init_labels ]] || die "$init_labels: no such labels file"
[[ $max_iter =~ ^[0-9]+$ ]] || die "--max-iter $max_iter: not a whole number"
[[ $encode =~ ^(none|fv|vlad|avg|max|patches)$ ]] || die "--encode $encode: one of none, fv, vlad, avg, max, patches"
[[ $tree_affinity =~ ^(lift|confusion|centroids|reports)$ ]] || die "--tree-affinity $tree_affinity: one of lift, confusion, centroids, reports"
[[ $tree_affinity != reports || -n $reports ]] || die "--tree-affinity reports needs --reports and --manifest"
[[ $tree_preference =~ ^(0(\.[0-9]+)?|1(\.0+)?|\.[0-9]+)$ ]] || die "--tree-preference $tree_preference: a quantile between 0 and 1"
if [[ -n $reports && -z $manifest ]] || [[ -z $reports && -n $manifest ]]; then
  die "--reports and --manifest go together"
fi

[[ -z $normalize || $normalize =~ ^(imagenet|zscore|timm)$ ]] || die "--normalize $normalize: imagenet, zscore or timm"
[[ -z $restart_from || $restart_from =~ ^iter-[0-9]+$ ]] || die "--restart-from $restart_from: use iter-N, e.g. iter-2"

# Extra arguments per stage, word-split: e.g. CLUSTER_ARGS="--lam 1e-5 --pca 256".
read -r -a featurize_args <<< "${FEATURIZE_ARGS:-}"
read -r -a finetune_args <<< "${FINETUNE_ARGS:-}"
read -r -a encode_args <<< "${ENCODE_ARGS:-}"
read -r -a cluster_args <<< "${CLUSTER_ARGS:-}"

# The stage commands: override any of them to swap a stage.
ldpo=${LDPO_BIN:-ldpo}
read -r -a featurize_cmd <<< "${FEATURIZE_CMD:-$ldpo featurize}"
read -r -a finetune_cmd <<< "${FINETUNE_CMD:-$ldpo finetune}"
read -r -a encode_cmd <<< "${ENCODE_CMD:-$ldpo encode}"
read -r -a cluster_cmd <<< "${CLUSTER_CMD:-$ldpo cluster}"
read -r -a converge_cmd <<< "${CONVERGE_CMD:-$ldpo converge}"
read -r -a hierarchy_cmd <<< "${HIERARCHY_CMD:-$ldpo hierarchy}"
read -r -a keywords_cmd <<< "${KEYWORDS_CMD:-$ldpo keywords}"
read -r -a report_cmd <<< "${REPORT_CMD:-$ldpo report}"

# Encoding needs a conv layer: `local` asks featurize for the architecture's last one
# (the paper's Conv5 / Inception-5b). Without encoding the loop clusters `multiscale`:
# shallow stages carry texture, deep ones layout (measured in the README's Discovery).
[[ -z $layer && $encode != none ]] && layer=local
[[ -z $layer ]] && layer=multiscale

common=(--seed "$seed" --device "$device" --workers "$workers")
[[ ${LDPO_QUIET:-0} == 1 ]] && common+=(--quiet)
arch_args=()
[[ -n $arch ]] && arch_args=(--arch "$arch")
layer_args=()
[[ -n $layer ]] && layer_args=(--layer "$layer")
amp_args=()
[[ $amp == 1 ]] && amp_args=(--amp)
# input options the user set (else the stages' recipe decides, and checkpoints carry them)
input_args=()
[[ -n $input_size ]] && input_args+=(--input-size "$input_size")
[[ -n $normalize ]] && input_args+=(--normalize "$normalize")

[[ ! -e $work || -d $work ]] || die "$work: exists and is not a folder (give --work a folder)"
mkdir -p "$work"
history=$work/history.csv

iter_dir() { printf '%s/iter-%02d' "$work" "$1"; }

# ---- one loop at a time in WORK ------------------------------------------------------------
# An flock on WORK/.ldpo-loop.lock, held by this shell and the stages it starts: the kernel
# releases it when the last of them ends, however it ends, so a killed loop blocks nobody.
lock=$work/.ldpo-loop.lock
take_lock() {
  if command -v flock > /dev/null; then
    flock -n "$1"
  else  # the same lock without util-linux (macOS): any Python's fcntl.flock on the shared descriptor
    python3 -c 'import fcntl, sys; fcntl.flock(int(sys.argv[1]), fcntl.LOCK_EX | fcntl.LOCK_NB)' "$1" 2> /dev/null
  fi
}
exec {lock_fd}>> "$lock" || die "$lock: cannot open the work folder's lock file"
if ! take_lock "$lock_fd"; then
  holder=
  read -r holder < "$lock" || true
  die "$work: another ldpo-loop is running in this work folder (${holder:-its process is unknown}); wait for it to end, or stop it"
fi
printf 'pid %s on %s, started %s\n' "$$" "${HOSTNAME:-unknown host}" "$(date '+%Y-%m-%d %H:%M:%S')" > "$lock"

# ---- the run record ------------------------------------------------------------------------
# Written, compared and pruned by ldpo's own Python (`ldpo _workdir`, ldpo.common.workdir), so
# that any byte a path may hold (tab, newline, quote, backslash) stays a string in valid JSON.
read -r -a ldpo_cmd <<< "$ldpo"
workdir() { "${ldpo_cmd[@]}" _workdir "$@"; }
abs() { [[ -z $1 ]] || realpath -m -- "$1"; }
checksum() {  # sha256 of a file, or of a Zarr folder's files (names and contents); "" for none
  if [[ -z $1 || ! -e $1 ]]; then echo ""
  elif [[ -d $1 ]]; then (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
  else sha256sum < "$1" | cut -c1-64; fi
}
# One name=value per setting, command and input (names unique across sections): a rerun names
# exactly what differs. Workers and device do not change what is computed and may differ
# between runs.
init_file=""
[[ $init == weights:* || $init == checkpoint:* ]] && init_file=${init#*:}
record=(format=ldpo-run-1)
for name in images truth reports manifest init_labels; do
  value=$(abs "${!name}")
  record+=("settings.$name=$value")
done
value=${init%%:*}${init_file:+:$(abs "$init_file")}
record+=("settings.init=$value")
for name in arch layer encode method k metric threshold max_iter no_early_stop epochs lr balanced amp split \
            input_size normalize input_filter batch_size seed tree_affinity tree_preference; do
  record+=("settings.$name=${!name}")
done
record+=("settings.extra_args=F[${FEATURIZE_ARGS:-}] T[${FINETUNE_ARGS:-}] E[${ENCODE_ARGS:-}] C[${CLUSTER_ARGS:-}]")
for name in featurize finetune encode cluster converge hierarchy keywords report; do
  cmd="${name}_cmd[*]"
  record+=("commands.${name}_cmd=${!cmd}")
done
record+=("commands.ldpo_bin=$ldpo")
for name in images truth reports manifest init_labels init; do
  file=${!name}
  [[ $name == init ]] && file=$init_file
  sum=$(checksum "$file")
  record+=("inputs.${name}_sha256=$sum")
done

run_json=$work/run.json
new_record=$work/.run.json.new
[[ ! -d $run_json ]] || die "$run_json: a folder, not a run record"
trap 'rm -f -- "$new_record"' EXIT
workdir record "$new_record" "${record[@]}" || exit 2
same_record=0
if [[ $fresh == 1 ]]; then
  log "--fresh: starting over in $work"
  workdir forget "$work" 0 --fresh || exit 2
elif [[ -e $run_json || -L $run_json ]]; then
  status=0
  differ=$(workdir diff "$run_json" "$new_record" 2>&1) || status=$?
  if (( status == 0 )); then
    same_record=1
  elif (( status == 1 )); then
    kind=${differ%%$'\t'*}
    differ=${differ#*$'\t'}
    if [[ $kind == tree ]]; then
      # Only the tree's settings changed (or a record from before they were settings): the
      # iterations stand; the tree and the report that shows it are made again.
      log "the tree's settings differ ($differ): recomputing final/tree and the report"
      workdir forget "$work" tree "a change of the tree's settings" || exit 2
    elif [[ -z $restart_from ]]; then
      die "$run_json: this work folder was made with other settings or inputs ($differ); rerun with the same ones, or add --restart-from iter-N or --fresh"
    fi
    if [[ $kind == inputs && $restart_from != iter-0 ]]; then
      die "$run_json: the inputs differ ($differ): earlier iterations cannot be kept; use --fresh"
    fi
  else  # not a valid record: the iterations' settings are unknown
    differ=${differ#ldpo-loop: error: }
    [[ -n $restart_from ]] || die "$differ; the settings of this work folder are unknown: add --fresh (start over) or --restart-from iter-N (keep iterations < N)"
    log "$differ; --restart-from $restart_from keeps the iterations before it as they are"
  fi
else
  has_iterations=0
  for d in "$work"/iter-*; do
    if [[ -d $d && ${d##*/} =~ ^iter-[0-9]+$ ]]; then has_iterations=1; fi
  done
  if [[ $has_iterations == 1 && -z $restart_from ]]; then
    die "$run_json: missing, and $work holds iterations made with unknown settings; add --fresh (start over) or --restart-from iter-N (keep iterations < N)"
  fi
fi
if [[ -n $restart_from ]]; then
  n=$((10#${restart_from#iter-}))
  (( n == 0 )) || [[ -e $(iter_dir $((n - 1)))/labels.csv ]] || die "--restart-from $restart_from: $(iter_dir $((n - 1))) has no labels.csv to start from"
  log "--restart-from $restart_from: recomputing iterations >= $n"
  workdir forget "$work" "$n" "--restart-from $restart_from" || exit 2
fi
if [[ $same_record == 1 ]]; then rm -f -- "$new_record"; else mv -f -- "$new_record" "$run_json"; fi

# A stage that fails stops the loop with exit 2, whatever status it returned (1 included:
# converge's "go on" is read from what it prints, never from a status).
stage() {
  local name=$1 status=0
  shift
  "$@" || status=$?
  (( status == 0 )) || die "$name failed (exit status $status); stopping (rerun the same command to resume)"
}

# featurize -> [encode] -> cluster, for the model SPEC (an --init value) into DIR.
features_and_labels() {
  local spec=$1 dir=$2 feats
  feats=$dir/features.h5
  # ---- begin: --encode patches (issue 21, LDPO-PM) ----------------------------------------
  # The encoder reads the images itself with the current model (SPEC), and the previous
  # iteration's labels choose its elements (none at iteration 0). Its output is encoded.h5:
  # featurize and the conv-layer encode below find their output there and skip.
  if [[ $encode == patches && ! -e $dir/encoded.h5 ]]; then
    local t_now prev_labels=() patch_args=()
    t_now=$((10#${dir##*iter-}))
    (( t_now == 0 )) || prev_labels=(--labels "$(iter_dir $((t_now - 1)))/labels.csv")
    [[ $spec == checkpoint:* ]] || patch_args=("${input_args[@]}" --input-filter "$input_filter")
    [[ $layer == local ]] || patch_args+=(--layer "$layer")  # local: the encoder's default (multiscale)
    log "$(basename "$dir"): encode (patches${prev_labels[*]:+, elements mined from iter-$(printf %02d $((t_now - 1)))})"
    stage encode "${encode_cmd[@]}" "$images" --out "$dir/encoded.h5" --method patches --model "$spec" \
      "${prev_labels[@]}" "${patch_args[@]}" "${arch_args[@]}" "${encode_args[@]}" "${common[@]}"
  fi
  [[ $encode == patches ]] && feats=$dir/encoded.h5
  # ---- end: --encode patches ------------------------------------------------------------------
  if [[ ! -e $feats ]]; then
    log "$(basename "$dir"): featurize"
    local size_args=()
    [[ $spec == checkpoint:* ]] || size_args=("${input_args[@]}" --input-filter "$input_filter")
    stage featurize "${featurize_cmd[@]}" "$images" --out "$feats" --init "$spec" "${layer_args[@]}" \
      "${size_args[@]}" --batch-size "$batch_size" "${arch_args[@]}" "${amp_args[@]}" "${featurize_args[@]}" \
      "${common[@]}"
  fi
  if [[ $encode != none ]]; then
    local encoded=$dir/encoded.h5
    if [[ ! -e $encoded ]]; then
      log "$(basename "$dir"): encode ($encode)"
      stage encode "${encode_cmd[@]}" "$feats" --out "$encoded" --method "$encode" "${encode_args[@]}" "${common[@]}"
    fi
    feats=$encoded
  fi
  if [[ ! -e $dir/labels.csv ]]; then
    log "$(basename "$dir"): cluster ($method, k=$k)"
    stage cluster "${cluster_cmd[@]}" "$feats" --out "$dir/labels.csv" --method "$method" --k "$k" \
      --summary "$dir/clusters" "${cluster_args[@]}" "${common[@]}"
  fi
}

# converge's verdict for iteration T as recorded by an earlier run, when it stands: printed in
# converge.txt, which is newer than the labels it compared, and the iteration has its row in
# history.csv. (--restart-from deletes the verdicts of the iterations it keeps.)
recorded_verdict() {
  local t=$1 dir verdict
  dir=$(iter_dir "$t")
  [[ -f $dir/converge.txt && $dir/converge.txt -nt $dir/labels.csv ]] || return 1
  (( t == 0 )) || [[ $dir/converge.txt -nt $(iter_dir $((t - 1)))/labels.csv ]] || return 1
  [[ -f $history ]] && awk -F, -v t="$t" 'NR > 1 && $1 == t { found = 1 } END { exit !found }' "$history" || return 1
  verdict=$(grep -x 'converged=[01]' "$dir/converge.txt" | tail -n 1) || return 1
  echo "${verdict#converged=}"
}

# converge for iteration T; sets $converged to 0 (stop) or 1 (go on); aborts on anything else.
# A resume takes the verdict an earlier run recorded, so a finished run changes no file.
check() {
  local t=$1 dir prev_args=() truth_args=() metrics_args=() fields_args=() status=0
  dir=$(iter_dir "$t")
  if converged=$(recorded_verdict "$t"); then
    return 0
  fi
  [[ $t -gt 0 ]] && prev_args=(--prev "$(iter_dir $((t - 1)))/labels.csv")
  [[ -n $truth ]] && truth_args=(--truth "$truth")
  [[ -f $dir/model.metrics.json ]] && metrics_args=(--metrics-json "$dir/model.metrics.json")
  # issue 18 item 6: agreement with the manifest's header fields (evaluation only) -> history.fields.csv
  [[ -n $manifest ]] && fields_args=(--fields "$manifest")
  "${converge_cmd[@]}" "$dir/labels.csv" "${prev_args[@]}" "${truth_args[@]}" "${metrics_args[@]}" "${fields_args[@]}" \
    --history "$history" --iteration "$t" --metric "$metric" --threshold "$threshold" \
    --plot "$work/history.png" --quiet > "$dir/converge.txt" || status=$?
  (( status <= 1 )) || die "converge failed with exit status $status at iteration $t; stopping"
  # The verdict is what converge prints, never its exit status alone: a Python that dies
  # before converge runs (an import error) also exits 1, which must not read as "go on".
  verdict=$(grep -x 'converged=[01]' "$dir/converge.txt" | tail -n 1 || true)
  [[ -n $verdict ]] || die "$dir/converge.txt: converge printed no converged=0|1 verdict (exit status $status)"
  converged=${verdict#converged=}
}

# ---- iteration 0: labels from the initial model, or the given initial labels ----------
dir0=$(iter_dir 0)
mkdir -p "$dir0"
if [[ -n $init_labels ]]; then
  [[ -e $dir0/labels.csv ]] || cp "$init_labels" "$dir0/labels.csv"
  log "iter-00: initial labels from $init_labels"
else
  features_and_labels "$init" "$dir0"
fi
check 0

# ---- iterations 1..max: finetune on the previous labels, re-featurize, re-cluster -------
t=0
model_spec=$init
while (( t < max_iter )); do
  t=$((t + 1))
  dir=$(iter_dir "$t")
  prev=$(iter_dir $((t - 1)))
  mkdir -p "$dir"
  if [[ ! -e $dir/model.pt ]]; then
    log "iter-$(printf %02d "$t"): finetune on $(basename "$prev")/labels.csv"
    tune_args=(--epochs "$epochs" --split "$split" "${input_args[@]}" --batch-size "$batch_size" --resume)
    [[ -n $lr ]] && tune_args+=(--lr "$lr")
    tune_args+=("${finetune_args[@]}")
    [[ $balanced == 1 ]] && tune_args+=(--balanced)
    tune_args+=("${amp_args[@]}")
    if [[ $model_spec == checkpoint:* ]]; then tune_args+=(--new-head); else tune_args+=(--input-filter "$input_filter"); fi
    stage finetune "${finetune_cmd[@]}" "$images" "$prev/labels.csv" --out "$dir/model.pt" --init "$model_spec" \
      "${arch_args[@]}" "${tune_args[@]}" "${common[@]}"
  fi
  model_spec=checkpoint:$dir/model.pt
  features_and_labels "$model_spec" "$dir"
  check "$t"
  if [[ $converged == 1 && $no_early_stop != 1 ]]; then
    log "converged at iteration $t ($metric >= $threshold)"
    break
  fi
done
last=$t

# ---- the category tree and keywords from the final model ---------------------------------
final=$work/final
mkdir -p "$final"
if (( last == 0 )); then
  log "no fine-tuning iteration ran (--max-iter 0): final labels are iteration 0's; no tree"
  cp "$dir0/labels.csv" "$final/labels.csv"
else
  # The final model's classes are the labels it was trained on: the tree, the final
  # labels and the keywords all refer to those categories.
  trained_on=$(iter_dir $((last - 1)))/labels.csv
  [[ -e $final/labels.csv ]] || cp "$trained_on" "$final/labels.csv"
  [[ -e $final/model.pt ]] || cp "$(iter_dir "$last")/model.pt" "$final/model.pt"
  if [[ ! -e $final/probs.h5 ]]; then
    log "final: class probabilities"
    stage "featurize (class probabilities)" "${featurize_cmd[@]}" "$images" --out "$final/probs.h5" --init "checkpoint:$(iter_dir "$last")/model.pt" \
      --layer probs --batch-size "$batch_size" "${amp_args[@]}" "${common[@]}"
  fi
  if [[ ! -e $final/tree/tree.json ]]; then
    log "final: hierarchy ($tree_affinity, preference $tree_preference)"
    tree_args=(--affinity "$tree_affinity" --preference "$tree_preference")
    if [[ $tree_affinity == centroids ]]; then  # the final model's features, as the last clustering saw them
      last_feats=$(iter_dir "$last")/features.h5
      [[ $encode != none ]] && last_feats=$(iter_dir "$last")/encoded.h5
      tree_args+=(--features "$last_feats")
    elif [[ $tree_affinity == reports ]]; then
      tree_args+=(--reports "$reports" --manifest "$manifest")
    fi
    stage hierarchy "${hierarchy_cmd[@]}" "$final/probs.h5" "$final/labels.csv" --out "$final/tree" "${tree_args[@]}" \
      "${common[@]}" > "$final/levels.txt"
  fi
fi
if [[ -n $reports && ! -e $final/keywords/index.html ]]; then
  log "final: keywords"
  stage keywords "${keywords_cmd[@]}" "$final/labels.csv" --manifest "$manifest" --reports "$reports" --images "$images" \
    --out "$final/keywords" "${common[@]}"
fi

if [[ ! -e $work/report/index.html ]]; then
  log "final: report"
  stage report "${report_cmd[@]}" "$work" --out "$work/report" "${common[@]}"
fi

# ---- summary --------------------------------------------------------------------------------
awk -F, '
  NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  function v(name) { return (name in col && $col[name] != "") ? $col[name] : "-" }
  function f(name) { x = v(name); return x == "-" ? x : sprintf("%.3f", x) }
  BEGIN { printf "%-5s %5s %6s %9s %7s %10s %8s\n", "iter", "K", "top1", "nmi_prev", "purity", "nmi_truth", "purity" ;
          printf "%-5s %5s %6s %9s %7s %10s %8s\n", "", "", "", "", "(prev)", "", "(truth)" }
  { printf "%-5s %5s %6s %9s %7s %10s %8s\n", v("iteration"), v("k"), f("top1"), f("nmi_prev"),
           f("purity_prev"), f("nmi_truth"), f("purity_truth") }
' "$history"
echo "history: $history  plot: $work/history.png"
[[ -e $final/tree/tree.png ]] && echo "tree: $final/tree/tree.png ($(tr '\n' ' ' < "$final/levels.txt"))"
[[ -e $final/keywords/index.html ]] && echo "review sheet: $final/keywords/index.html"
echo "final labels: $final/labels.csv"
[[ -e $final/model.pt ]] && echo "final model: $final/model.pt (assign new images with: ldpo assign IMAGES --model $final/model.pt --out LABELS.csv)"
echo "report: $work/report/index.html"
