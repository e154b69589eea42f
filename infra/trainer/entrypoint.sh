#!/usr/bin/env bash
# Entry point of the trainer image: runs `python -m trainer.train "$@"`.
#
# On multi-host Kubernetes (infra/trainer/k8s/multi_host.yaml) it first builds TF_CONFIG,
# which MultiWorkerMirroredStrategy reads to find its peers. Vertex AI sets TF_CONFIG
# itself, and a single host needs none, so then this only execs the trainer.
#
# Inputs (set by the JobSet spec):
#   SEQREC_NUM_WORKERS         number of pods (hosts) in the job
#   SEQREC_WORKER_INDEX        this pod's index; defaults to JOB_COMPLETION_INDEX, which an
#                              Indexed Job (and so a JobSet) gives every pod
#   SEQREC_WORKER_HOST_PREFIX  pod i is reachable as ${PREFIX}${i}.${SEQREC_WORKER_DOMAIN}
#   SEQREC_WORKER_DOMAIN       the headless Service / JobSet subdomain
#   SEQREC_WORKER_PORT         gRPC port of the collective ops (default 2222)
#
# `entrypoint.sh --print_tf_config` prints the TF_CONFIG this pod would use and exits,
# to debug a cluster spec without starting TensorFlow.
set -euo pipefail

die() {
  echo "seqrec entrypoint: $*" >&2
  exit 2
}

is_uint() {
  [[ "$1" =~ ^[0-9]+$ ]]
}

if [[ -z "${TF_CONFIG:-}" && -n "${SEQREC_NUM_WORKERS:-}" ]]; then
  num_workers="${SEQREC_NUM_WORKERS}"
  index="${SEQREC_WORKER_INDEX:-${JOB_COMPLETION_INDEX:-}}"
  prefix="${SEQREC_WORKER_HOST_PREFIX:-}"
  domain="${SEQREC_WORKER_DOMAIN:-}"
  port="${SEQREC_WORKER_PORT:-2222}"
  if ! is_uint "${num_workers}" || ((10#${num_workers} < 1)); then
    die "SEQREC_NUM_WORKERS must be a positive integer, got '${num_workers}'"
  fi
  [[ -n "${index}" ]] ||
    die "SEQREC_NUM_WORKERS is set but neither SEQREC_WORKER_INDEX nor JOB_COMPLETION_INDEX is"
  if ! is_uint "${index}" || ((10#${index} >= 10#${num_workers})); then
    die "worker index must be an integer in [0, ${num_workers}), got '${index}'"
  fi
  [[ -n "${prefix}" ]] || die "SEQREC_WORKER_HOST_PREFIX is required with SEQREC_NUM_WORKERS"
  is_uint "${port}" || die "SEQREC_WORKER_PORT must be an integer, got '${port}'"
  # Pod hostnames are DNS labels: no quotes or backslashes can reach the JSON below.
  [[ "${prefix}${domain}" =~ ^[a-z0-9.-]+$ ]] ||
    die "worker host prefix/domain must be lowercase DNS names, got '${prefix}' / '${domain}'"

  workers=""
  for ((i = 0; i < 10#${num_workers}; i++)); do
    host="${prefix}${i}"
    [[ -n "${domain}" ]] && host="${host}.${domain}"
    workers+="${workers:+,}\"${host}:${port}\""
  done
  # No "chief" entry: worker 0 is the chief (writes checkpoints, summaries and the export).
  tf_config=$(printf '{"cluster": {"worker": [%s]}, "task": {"type": "worker", "index": %d}}' \
    "${workers}" "$((10#${index}))")
  export TF_CONFIG="${tf_config}"
fi

if [[ "${1:-}" == "--print_tf_config" ]]; then
  echo "${TF_CONFIG:-}"
  exit 0
fi

exec "${SEQREC_PYTHON:-python3}" -m trainer.train "$@"
