#!/usr/bin/env bash
# A nightly rebuild on AWS Batch: an array job of N shards (each child's AWS_BATCH_JOB_ARRAY_INDEX
# is its shard index), then one emit job that depends on the whole array.
#   deploy/aws-batch/submit.sh QUEUE N AS_OF
set -euo pipefail
queue=$1 n=$2 as_of=$3
array=$(aws batch submit-job --job-name clearframe-shards --job-queue "$queue" \
  --job-definition clearframe-shard --array-properties "size=$n" \
  --parameters "shard=env/$n,asOf=$as_of" --query jobId --output text)
aws batch submit-job --job-name clearframe-emit --job-queue "$queue" \
  --job-definition clearframe-shard --depends-on "jobId=$array" \
  --container-overrides '{"command":["emit","--work=s3://clearframe-work/nightly","--out=s3://datasets/person-detector/nightly","--sse=aws:kms","--require-sse"]}'
