#!/usr/bin/env bash
# Builds the Flex Template image (launcher + worker image) and writes the template spec.
#
#   infra/dataflow/build_flex_template.sh PROJECT REGION BUCKET [TAG]
#
# Image: REGION-docker.pkg.dev/PROJECT/seqrec/dataflow:TAG (Artifact Registry repository
# "seqrec", created by infra/gcs/setup_bucket.sh). Spec: gs://BUCKET/templates/seqrec-TAG.json.
# The image build runs as seqrec-build@PROJECT (infra/gcs/setup_bucket.sh; the caller needs
# its --builder grants): the source is staged under gs://BUCKET/cloudbuild/source/ and the
# log written to gs://BUCKET/cloudbuild/logs/, where the caller reads it.
# Run it in the project's virtualenv (PYTHON: its python, default python3).
# Then launch with:
#   python infra/dataflow/launch.py --project=PROJECT --region=REGION --bucket=BUCKET \
#     --flex_template=gs://BUCKET/templates/seqrec-TAG.json --worker_image=IMAGE
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
  echo "usage: $0 PROJECT REGION BUCKET [TAG]" >&2
  exit 2
fi
project="$1"
region="$2"
bucket="$3"
tag="${4:-$(git -C "$(dirname "$0")" rev-parse --short HEAD)}"
repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
image="${region}-docker.pkg.dev/${project}/seqrec/dataflow:${tag}"
spec="gs://${bucket}/templates/seqrec-${tag}.json"

# The template's parameters, generated from beam_jobs.options (where the job declares its
# flags, help texts and defaults once); first, so a broken checkout stops before a build.
metadata="$(mktemp)"
build_config="$(mktemp)"
trap 'rm -f "${metadata}" "${build_config}"' EXIT
"${PYTHON:-python3}" "${repo_root}/infra/dataflow/flex_template/template_metadata.py" >"${metadata}"

# Cloud Build builds from the repository root (its upload skips .gitignore'd paths such as
# .venv/); BuildKit applies the Dockerfile's own .dockerignore.
cat >"${build_config}" <<YAML
steps:
  - name: gcr.io/cloud-builders/docker
    env: [DOCKER_BUILDKIT=1]
    args: [build, -f, infra/dataflow/flex_template/Dockerfile, -t, "${image}", .]
images: ["${image}"]
serviceAccount: projects/${project}/serviceAccounts/seqrec-build@${project}.iam.gserviceaccount.com
logsBucket: gs://${bucket}/cloudbuild/logs
options:
  logging: GCS_ONLY
YAML
gcloud builds submit "${repo_root}" --project="${project}" --region="${region}" \
  --config="${build_config}" --gcs-source-staging-dir="gs://${bucket}/cloudbuild/source"

gcloud dataflow flex-template build "${spec}" \
  --project="${project}" \
  --image="${image}" \
  --sdk-language=PYTHON \
  --metadata-file="${metadata}"

echo "template: ${spec}"
echo "image:    ${image}"
