#!/usr/bin/env bash
# Builds and pushes the GPU trainer image with Cloud Build (no local Docker or GPU needed).
#
#   infra/trainer/build_image.sh PROJECT REGION [TAG]
#
# Pushes REGION-docker.pkg.dev/PROJECT/seqrec/trainer:TAG (TAG defaults to the git commit)
# and prints it; pass it to infra/trainer/launch.py --image. With local Docker instead:
#   DOCKER_BUILDKIT=1 docker build -f infra/trainer/Dockerfile -t IMAGE . && docker push IMAGE
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: $0 PROJECT REGION [TAG]" >&2
  exit 2
fi
project="$1"
region="$2"
tag="${3:-$(git -C "$(dirname "$0")" rev-parse --short HEAD)}"
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
YAML
gcloud builds submit "${repo_root}" --project="${project}" --region="${region}" \
  --config="${build_config}"
echo "${image}"
