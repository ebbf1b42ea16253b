#!/usr/bin/env bash
# Rewarded soups only, two reward pairs: llm/params.yaml's (sentiment, readability), then
# (sentiment, neutrality) into out/rsoups_neutrality. What the machine needs: setup.sh.
#
#   bash benchmarks/llm_gpu/rsoups.sh STASH OUT
set -u
STASH=$1 OUT=$2
. benchmarks/llm_gpu/setup.sh
run --stages fetch sft rl rsoups || exit 1
cp -r "$W/out/rsoups" "$W/out/rsoups_sentiment_readability"
run --stages rl --set 'rsoups.rewards=[neutrality]' || exit 1
run --stages rsoups --set 'rsoups.rewards=[sentiment, neutrality]' || exit 1
cp -r "$W/out/rsoups" "$W/out/rsoups_sentiment_neutrality"
echo "LLM RSOUPS RUN DONE"
