#!/usr/bin/env bash
# Builds and pushes the GPU trainer image with Cloud Build (no local Docker or GPU needed).
#
#   infra/trainer/build_image.sh PROJECT REGION BUCKET [TAG]
#
# Pushes REGION-docker.pkg.dev/PROJECT/seqrec/trainer:TAG (TAG defaults to the git commit)
# and prints it; pass it to infra/trainer/launch.py --image. The build runs as
# seqrec-build@PROJECT (infra/gcs/setup_bucket.sh; the caller needs its --builder grants):
# the source is staged under gs://BUCKET/cloudbuild/source/ and the log written to
# gs://BUCKET/cloudbuild/logs/, where the caller reads it. With local Docker instead:
#   DOCKER_BUILDKIT=1 docker build -f infra/trainer/Dockerfile -t IMAGE . && docker push IMAGE
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
  echo "usage: $0 PROJECT REGION BUCKET [TAG]" >&2
  exit 2
fi
project="$1"
region="$2"
bucket="$3"
tag="${4:-$(git -C "$(dirname "$0")" rev-parse --short HEAD)}"
if [[ ! "${bucket}" =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]]; then
  echo "BUCKET must be a bucket name without gs://, got '${bucket}'" >&2
  exit 2
fi
repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
image="${region}-docker.pkg.dev/${project}/seqrec/trainer:${tag}"

build_config="$(mktemp)"
trap 'rm -f "${build_config}"' EXIT
cat >"${build_config}" <<YAML
steps:
  - name: gcr.io/cloud-builders/docker
    env: [DOCKER_BUILDKIT=1]
    args: [build, -f, infra/trainer/Dockerfile, -t, "${image}", .]
images: ["${image}"]
timeout: 3600s
serviceAccount: projects/${project}/serviceAccounts/seqrec-build@${project}.iam.gserviceaccount.com
logsBucket: gs://${bucket}/cloudbuild/logs
options:
  logging: GCS_ONLY
YAML
gcloud builds submit "${repo_root}" --project="${project}" --region="${region}" \
  --config="${build_config}" --gcs-source-staging-dir="gs://${bucket}/cloudbuild/source"
echo "${image}"
