#!/usr/bin/env bash
# Acceptance run of `lines merge` on realistic shapes: N random ViT-B/32 image towers (open_clip
# keys, 88M parameters, 351 MB) and N random all-MiniLM-L6-v2 BertModels (22.7M, 91 MB), every
# merge method × both block policies × with/without LiNeS (β = 0.5, automatic α).
#
#   scripts/acceptance_merge.sh [WORKDIR]          # default WORKDIR: /tmp/lines_acceptance
#
# Environment (for reduced runs): ACCEPT_KINDS ("vit-b-32 minilm"), ACCEPT_N (8),
# ACCEPT_METHODS (all), ACCEPT_POLICIES ("reference depth"), ACCEPT_BETAS ("none 0.5"),
# LINES (the lines command; default .venv/bin/lines).
# Checkpoints are generated once per kind (scripts/make_random_checkpoints.py) and reused.
# Prints one TSV line per merge (kind, method, policy, beta, exit code, seconds, max RSS MB) and
# writes the same to WORKDIR/timings.tsv; exits non-zero if any merge failed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=${1:-/tmp/lines_acceptance}
KINDS=${ACCEPT_KINDS:-"vit-b-32 minilm"}
N=${ACCEPT_N:-8}
METHODS=${ACCEPT_METHODS:-"task_arithmetic ties magnitude_prune dare consensus uniform_soup greedy_soup rewarded_soup"}
POLICIES=${ACCEPT_POLICIES:-"reference depth"}
BETAS=${ACCEPT_BETAS:-"none 0.5"}
LINES=${LINES:-$ROOT/.venv/bin/lines}
PY=${PYTHON:-$ROOT/.venv/bin/python}
TIME=$(command -v /usr/bin/time || true)
mkdir -p "$WORK"
OUT="$WORK/timings.tsv"
printf 'kind\tmethod\tpolicy\tbeta\trc\tseconds\tmax_rss_mb\n' | tee "$OUT"

weights=$("$PY" -c "print(' '.join([repr(1 / $N)] * $N))")
failed=0
for kind in $KINDS; do
    ck="$WORK/$kind"
    if [ ! -f "$ck/ft_$((N - 1)).safetensors" ]; then
        extra=()
        [ "$kind" = "vit-b-32" ] && extra=(--image-only)
        "$PY" scripts/make_random_checkpoints.py --kind "$kind" -n "$N" --out "$ck" --quiet "${extra[@]}"
    fi
    fts=()
    for ((i = 0; i < N; i++)); do fts+=("$ck/ft_$i.safetensors"); done
    for method in $METHODS; do
        margs=()
        case $method in
            greedy_soup)
                scores=$("$PY" -c "print(' '.join(str(1 - i / 100) for i in range($N)))")
                # a trivial evaluator: every soup scores 1.0, so every model is added
                margs=(--scores $scores --eval-cmd "echo {model} 1.0")
                ;;
            rewarded_soup) margs=(--weights $weights) ;;
        esac
        for policy in $POLICIES; do
            for beta in $BETAS; do
                bargs=()
                [ "$beta" != none ] && bargs=(--lines-beta "$beta")
                out="$WORK/out_${kind}_${method}_${policy}_${beta}.safetensors"
                rss="$WORK/.rss"
                start=$(date +%s.%N)
                rc=0
                cmd=("$LINES" merge --pretrained "$ck/pretrained.safetensors" --finetuned "${fts[@]}"
                    --method "$method" "${margs[@]}" "${bargs[@]}" --block-policy "$policy"
                    --out "$out" --overwrite --no-progress)
                if [ -n "$TIME" ]; then
                    "$TIME" -q -f "%M" -o "$rss" "${cmd[@]}" >/dev/null 2>"$WORK/.err" || rc=$?
                else
                    "${cmd[@]}" >/dev/null 2>"$WORK/.err" || rc=$?
                    echo 0 >"$rss"
                fi
                end=$(date +%s.%N)
                secs=$("$PY" -c "print(f'{$end - $start:.1f}')")
                mb=$(( $(tail -n 1 "$rss" | tr -cd 0-9) / 1024 ))
                # GNU time has been seen to report an absurd %M once; don't print it as a fact
                [ "$mb" -gt 1000000 ] && mb=n/a
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$method" "$policy" "$beta" "$rc" "$secs" "$mb" | tee -a "$OUT"
                if [ "$rc" != 0 ]; then
                    failed=1
                    sed 's/^/    /' "$WORK/.err" >&2
                fi
                rm -f "$out" "${out%.safetensors}.json"
            done
        done
    done
done
rm -f "$WORK/.rss" "$WORK/.err"
exit $failed
