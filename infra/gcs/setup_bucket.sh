#!/usr/bin/env bash
# One-time GCP set-up for seqrec: bucket, image repository, and four service accounts with
# only the roles their jobs need (see infra/README.md, "Permissions", for why each one).
#
#   infra/gcs/setup_bucket.sh [--dry_run] [--launcher=user:ME@example.com] \
#       [--builder=serviceAccount:CI@...] [--gke_namespace=default] PROJECT REGION BUCKET
#
# Creates (skipping what exists):
#   gs://BUCKET                              regional, uniform access, no public access
#   REGION-docker.pkg.dev/PROJECT/seqrec     Artifact Registry (trainer + Dataflow images)
#   seqrec-dataflow@PROJECT.iam...           Dataflow worker service account (data prep)
#   seqrec-recommend@PROJECT.iam...          Dataflow workers of batch recommendations
#   seqrec-trainer@PROJECT.iam...            Vertex AI / GKE training service account
#   seqrec-build@PROJECT.iam...              what Cloud Build builds the images as
# --launcher grants a person or CI account what it needs to launch jobs as those accounts.
# --builder grants one what it needs to build the images and the Flex Template (Cloud
# Build), the only grant of roles/cloudbuild.builds.editor; the same member may get both.
# --gke_namespace binds the Kubernetes service account seqrec-trainer in that namespace to
# seqrec-trainer@ (Workload Identity). --dry_run prints the commands and runs nothing.
set -euo pipefail

dry_run=0
launcher=""
builder=""
gke_namespace=""
args=()
for arg in "$@"; do
  case "${arg}" in
    --dry_run) dry_run=1 ;;
    --launcher=*) launcher="${arg#*=}" ;;
    --builder=*) builder="${arg#*=}" ;;
    --gke_namespace=*) gke_namespace="${arg#*=}" ;;
    -*)
      echo "unknown flag: ${arg}" >&2
      exit 2
      ;;
    *) args+=("${arg}") ;;
  esac
done
if [[ ${#args[@]} -ne 3 ]]; then
  echo "usage: $0 [--dry_run] [--launcher=MEMBER] [--builder=MEMBER] [--gke_namespace=NS]" \
    "PROJECT REGION BUCKET" >&2
  exit 2
fi
project="${args[0]}"
region="${args[1]}"
bucket="${args[2]}"
if [[ ! "${bucket}" =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]]; then
  echo "BUCKET must be a bucket name without gs://, got '${bucket}'" >&2
  exit 2
fi
for flag in launcher builder; do
  if [[ -n "${!flag}" && ! "${!flag}" =~ ^(user|serviceAccount|group):[^[:space:]]+$ ]]; then
    echo "--${flag} must be user:EMAIL, serviceAccount:EMAIL or group:EMAIL" >&2
    exit 2
  fi
done

dataflow_sa="seqrec-dataflow@${project}.iam.gserviceaccount.com"
recommend_sa="seqrec-recommend@${project}.iam.gserviceaccount.com"
trainer_sa="seqrec-trainer@${project}.iam.gserviceaccount.com"
build_sa="seqrec-build@${project}.iam.gserviceaccount.com"

bucket_objects="projects/_/buckets/${bucket}/objects"

# show CMD...: prints CMD as it can be pasted into a shell (words with other characters
# than these single-quoted).
show() {
  local arg line="+"
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      line+=" ${arg}"
    else
      line+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  echo "${line}"
}

run() {
  show "$@"
  if [[ ${dry_run} -eq 0 ]]; then
    "$@"
  fi
}

# revoke CMD...: like run, for a remove-iam-policy-binding whose binding may not be there.
revoke() {
  show "$@"
  if [[ ${dry_run} -eq 0 ]] && ! "$@" >/dev/null 2>&1; then
    echo "  (not granted: nothing to revoke)"
  fi
}

# grant_prefix MEMBER ROLE PREFIX: ROLE on this bucket's objects whose names start with
# PREFIX, and on nothing else (an IAM condition; with uniform bucket-level access the
# bucket's IAM policy is the only one its objects have).
grant_prefix() {
  local member="$1" role="$2" prefix="$3"
  local who="${member#*:}"
  local title="${who%%@*}-${role#roles/storage.}-${prefix%/}"
  run gcloud storage buckets add-iam-policy-binding "gs://${bucket}" --member="${member}" \
    --role="${role}" \
    --condition="expression=resource.name.startsWith(\"${bucket_objects}/${prefix}\"),title=${title//\//-}"
}

# exists CMD...: true when a describe command succeeds (never in --dry_run: print all).
exists() {
  [[ ${dry_run} -eq 0 ]] && "$@" >/dev/null 2>&1
}

run gcloud services enable --project="${project}" \
  dataflow.googleapis.com aiplatform.googleapis.com artifactregistry.googleapis.com \
  cloudbuild.googleapis.com storage.googleapis.com

if ! exists gcloud storage buckets describe "gs://${bucket}" --project="${project}"; then
  run gcloud storage buckets create "gs://${bucket}" --project="${project}" \
    --location="${region}" --uniform-bucket-level-access --public-access-prevention
fi

if ! exists gcloud artifacts repositories describe seqrec --project="${project}" \
  --location="${region}"; then
  run gcloud artifacts repositories create seqrec --project="${project}" \
    --location="${region}" --repository-format=docker \
    --description="seqrec trainer and Dataflow images"
fi

for sa in seqrec-dataflow seqrec-recommend seqrec-trainer seqrec-build; do
  if ! exists gcloud iam service-accounts describe "${sa}@${project}.iam.gserviceaccount.com" \
    --project="${project}"; then
    run gcloud iam service-accounts create "${sa}" --project="${project}" \
      --display-name="seqrec ${sa#seqrec-}"
  fi
done

# Dataflow workers: run work items (project-level role; Dataflow has no narrower one).
for sa in "${dataflow_sa}" "${recommend_sa}"; do
  run gcloud projects add-iam-policy-binding "${project}" --condition=None \
    --member="serviceAccount:${sa}" --role=roles/dataflow.worker
done

# Storage, per prefix (infra/README.md, "Permissions", has the table and the reasons).
# Older versions of this script gave both job accounts roles/storage.objectAdmin on the
# whole bucket; that binding would outweigh the ones below, so it goes.
for sa in "${dataflow_sa}" "${trainer_sa}"; do
  revoke gcloud storage buckets remove-iam-policy-binding "gs://${bucket}" --condition=None \
    --member="serviceAccount:${sa}" --role=roles/storage.objectAdmin
done
# All four: the bucket's metadata and its object names, not their contents
# (roles/storage.legacyBucketReader = storage.buckets.get + storage.objects.list). A list
# is a request on the bucket, which no object-prefix condition matches, and Beam looks the
# bucket up before it stages files; TensorFlow lists to glob shards and checkpoints.
for sa in "${dataflow_sa}" "${recommend_sa}" "${trainer_sa}" "${build_sa}"; do
  run gcloud storage buckets add-iam-policy-binding "gs://${bucket}" --condition=None \
    --member="serviceAccount:${sa}" --role=roles/storage.legacyBucketReader
done
# Dataflow workers, and the Flex Template launcher VM (it runs as the same account): read
# the input; write the output (with --overwrite, delete the old one; Beam also renames
# its temporary files there); read, write and delete temp and staging files.
grant_prefix "serviceAccount:${dataflow_sa}" roles/storage.objectViewer raw/
grant_prefix "serviceAccount:${dataflow_sa}" roles/storage.objectUser data/
grant_prefix "serviceAccount:${dataflow_sa}" roles/storage.objectUser dataflow/
# Batch recommendations' workers (beam_jobs.recommend_all): read users/ of the data and the
# trained runs' exports (runs/ holds checkpoints too: a prefix cannot single out export/),
# write recs/ (temporary names, then renamed), and Beam's temp and staging files. A
# separate account, so the prep job's workers still cannot read runs/.
grant_prefix "serviceAccount:${recommend_sa}" roles/storage.objectViewer data/
grant_prefix "serviceAccount:${recommend_sa}" roles/storage.objectViewer runs/
grant_prefix "serviceAccount:${recommend_sa}" roles/storage.objectUser recs/
grant_prefix "serviceAccount:${recommend_sa}" roles/storage.objectUser dataflow/
# Trainer: read the data; write runs (checkpoints, events, the export; its preflight writes
# and deletes a probe object under each output directory; CheckpointManager deletes
# checkpoints past --keep_checkpoints). Nothing at project level.
grant_prefix "serviceAccount:${trainer_sa}" roles/storage.objectViewer data/
grant_prefix "serviceAccount:${trainer_sa}" roles/storage.objectUser runs/
# Cloud Build, as seqrec-build@ (build_image.sh, build_flex_template.sh): read the source
# the submitter staged, write the build's log; nothing at project level.
grant_prefix "serviceAccount:${build_sa}" roles/storage.objectViewer cloudbuild/source/
grant_prefix "serviceAccount:${build_sa}" roles/storage.objectUser cloudbuild/logs/

# The job accounts pull their images from the seqrec repository only; the build account
# pushes them there.
for sa in "${dataflow_sa}" "${recommend_sa}" "${trainer_sa}"; do
  run gcloud artifacts repositories add-iam-policy-binding seqrec --project="${project}" \
    --location="${region}" --member="serviceAccount:${sa}" --role=roles/artifactregistry.reader
done
run gcloud artifacts repositories add-iam-policy-binding seqrec --project="${project}" \
  --location="${region}" --member="serviceAccount:${build_sa}" --role=roles/artifactregistry.writer

if [[ -n "${gke_namespace}" ]]; then
  # Pods running as Kubernetes SA <namespace>/seqrec-trainer act as seqrec-trainer@.
  run gcloud iam service-accounts add-iam-policy-binding "${trainer_sa}" --project="${project}" \
    --role=roles/iam.workloadIdentityUser \
    --member="serviceAccount:${project}.svc.id.goog[${gke_namespace}/seqrec-trainer]"
  echo "then: kubectl -n ${gke_namespace} create serviceaccount seqrec-trainer && kubectl -n" \
    "${gke_namespace} annotate serviceaccount seqrec-trainer" \
    "iam.gke.io/gcp-service-account=${trainer_sa}"
fi

if [[ -n "${launcher}" ]]; then
  # Launch Dataflow jobs and Vertex AI custom jobs, act as the three job accounts (only
  # those); upload the input, stage files (Beam looks the bucket up first), read results.
  run gcloud projects add-iam-policy-binding "${project}" --condition=None \
    --member="${launcher}" --role=roles/dataflow.developer
  run gcloud projects add-iam-policy-binding "${project}" --condition=None \
    --member="${launcher}" --role=roles/aiplatform.user
  for sa in "${dataflow_sa}" "${recommend_sa}" "${trainer_sa}"; do
    run gcloud iam service-accounts add-iam-policy-binding "${sa}" --project="${project}" \
      --member="${launcher}" --role=roles/iam.serviceAccountUser
  done
  for role in roles/storage.objectAdmin roles/storage.legacyBucketReader; do
    run gcloud storage buckets add-iam-policy-binding "gs://${bucket}" --condition=None \
      --member="${launcher}" --role="${role}"
  done
fi

if [[ -n "${builder}" ]]; then
  # Submit Cloud Builds: cloudbuild.builds.create exists only project-wide (builds are not
  # IAM resources) and builds.editor is the smallest predefined role holding it; builds run
  # as seqrec-build@ only (serviceAccountUser on it alone). gcloud builds submit looks up
  # the bucket it stages the source in (legacyBucketReader), uploads the source and reads
  # the log under cloudbuild/; gcloud dataflow flex-template build writes templates/.
  # artifactregistry.writer: for a local docker build and push instead.
  run gcloud projects add-iam-policy-binding "${project}" --condition=None \
    --member="${builder}" --role=roles/cloudbuild.builds.editor
  run gcloud iam service-accounts add-iam-policy-binding "${build_sa}" --project="${project}" \
    --member="${builder}" --role=roles/iam.serviceAccountUser
  run gcloud storage buckets add-iam-policy-binding "gs://${bucket}" --condition=None \
    --member="${builder}" --role=roles/storage.legacyBucketReader
  grant_prefix "${builder}" roles/storage.objectUser cloudbuild/
  grant_prefix "${builder}" roles/storage.objectUser templates/
  run gcloud artifacts repositories add-iam-policy-binding seqrec --project="${project}" \
    --location="${region}" --member="${builder}" --role=roles/artifactregistry.writer
fi

echo "bucket:               gs://${bucket}"
echo "dataflow workers:     ${dataflow_sa}"
echo "recommend workers:    ${recommend_sa}"
echo "trainer:              ${trainer_sa}"
echo "image builds:         ${build_sa}"
echo "images:               ${region}-docker.pkg.dev/${project}/seqrec"
