"""The Flex Template's metadata (its parameters), derived from beam_jobs.options.

    python infra/dataflow/flex_template/template_metadata.py > metadata.json

infra/dataflow/build_flex_template.sh runs this and hands the result to `gcloud dataflow
flex-template build --metadata-file`. One parameter per flag of beam_jobs.pipeline, with
the help text, default and allowed values its parser declares (declared there once, so the
template cannot drift from the job), plus the workers' image.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

NAME = "seqrec MovieLens timelines"
DESCRIPTION = ("MovieLens ratings -> per-user timelines -> tf.train.Example shards (train/, "
               "test/), vocab.tsv, metadata.json, _SUCCESS. Parameters are flags of "
               "beam_jobs.pipeline.")
# Dataflow workers and the launcher VM read and write the bucket only.
GCS_DIRS = {"input_dir", "output_dir"}
# --download fetches MovieLens onto the local disk of wherever the job starts: a template
# reads its input from the bucket instead (infra/README.md, step 2).
LEFT_OUT = {"download"}
WORKER_IMAGE = {
    "name": "sdk_container_image", "label": "Worker image", "isOptional": True,
    "helpText": "The template's own image, so workers start with the project installed.",
}


def parameters() -> list[dict]:
    """The template's parameters: every beam_jobs.pipeline flag but LEFT_OUT and hidden
    ones, then the Beam option for the workers' image."""
    from beam_jobs import options

    out = []
    for action in options.make_parser()._actions:  # argparse has no public listing
        name = action.dest
        if (not action.option_strings or isinstance(action, argparse._HelpAction)
                or action.help == argparse.SUPPRESS or name in LEFT_OUT):
            continue
        param = {"name": name, "label": name.replace("_", " ").capitalize(),
                 "helpText": action.help or name}
        if name in GCS_DIRS:
            param["regexes"] = ["^gs://.+$"]
        else:
            param["isOptional"] = True
        if action.choices:
            param["regexes"] = [f"^({'|'.join(map(str, action.choices))})$"]
        elif action.nargs == "?" and action.const is True:  # a boolean (--overwrite)
            param["regexes"] = ["^(true|false)$"]
        out.append(param)
    return out + [dict(WORKER_IMAGE)]


def metadata() -> dict:
    return {"name": NAME, "description": DESCRIPTION, "parameters": parameters()}


if __name__ == "__main__":
    json.dump(metadata(), sys.stdout, indent=2)
    sys.stdout.write("\n")
