"""A small model of Cloud Storage IAM, enough to read what infra/gcs/setup_bucket.sh grants:
its --dry_run output parsed into bindings, and whether a member may use a permission on an
object (the storage roles' permissions, `resource.name.startsWith` conditions)."""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess

from infra_paths import INFRA

SETUP_BUCKET = os.path.join(INFRA, "gcs", "setup_bucket.sh")


def dry_run(project: str, region: str, bucket: str, *flags: str,
            script: str = SETUP_BUCKET) -> list[list[str]]:
    """The argv of every command the script prints (`+ ` lines), as a shell reads them."""
    result = subprocess.run(["bash", script, "--dry_run", *flags, project, region, bucket],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


@dataclasses.dataclass(frozen=True)
class Binding:
    scope: str  # "projects", "buckets", "service-accounts", "repositories"
    resource: str
    member: str
    role: str
    condition: str | None  # the CEL expression, None: unconditioned


def _flag(argv: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) <= 1, argv
    return values[0] if values else None


def bindings(commands: list[list[str]], verb: str = "add-iam-policy-binding") -> list[Binding]:
    out = []
    for argv in commands:
        if verb not in argv:
            continue
        at = argv.index(verb)
        condition = _flag(argv, "condition")
        if condition == "None":
            condition = None
        elif condition is not None:
            parts = dict(p.split("=", 1) for p in condition.split(","))
            assert set(parts) == {"expression", "title"}, condition  # gcloud wants a title
            condition = parts["expression"]
        out.append(Binding(argv[at - 1], argv[at + 1], _flag(argv, "member"), _flag(argv, "role"),
                           condition))
    return out


# The permissions of the storage roles the script uses (Cloud Storage's IAM roles page),
# as far as objects and listing go.
OBJECT_RW = {"storage.objects.get", "storage.objects.list", "storage.objects.create",
             "storage.objects.delete", "storage.objects.update"}
ROLE_PERMISSIONS = {
    "roles/storage.objectViewer": {"storage.objects.get", "storage.objects.list"},
    "roles/storage.objectCreator": {"storage.objects.create"},
    "roles/storage.objectUser": OBJECT_RW,
    "roles/storage.objectAdmin": OBJECT_RW | {"storage.objects.getIamPolicy",
                                              "storage.objects.setIamPolicy"},
    "roles/storage.legacyBucketReader": {"storage.buckets.get", "storage.objects.list"},
}
# Listing and bucket metadata are requests on the bucket; the rest on one object.
ON_BUCKET = {"storage.objects.list", "storage.buckets.get"}
READ, WRITE, DELETE = "storage.objects.get", "storage.objects.create", "storage.objects.delete"
_STARTS_WITH = re.compile(r'resource\.name\.startsWith\("([^"]+)"\)')


def matches(condition: str | None, resource: str) -> bool:
    if condition is None:
        return True
    prefix = _STARTS_WITH.fullmatch(condition)
    assert prefix, f"a condition this model does not read: {condition}"
    return resource.startswith(prefix.group(1))


def allowed(grants: list[Binding], member: str, permission: str, bucket: str,
            obj: str = "") -> bool:
    """Whether `member` may use `permission` on gs://bucket/obj (on the bucket itself for
    listing and bucket metadata)."""
    resource = f"projects/_/buckets/{bucket}"
    if permission not in ON_BUCKET:
        resource += "/objects/" + obj
    return any(b.member == member and b.scope == "buckets" and b.resource == f"gs://{bucket}"
               and permission in ROLE_PERMISSIONS.get(b.role, ()) and matches(b.condition, resource)
               for b in grants)
