"""Flex Template entry file: the launcher container runs this with the template's parameters
as flags (FLEX_TEMPLATE_PYTHON_PY_FILE); it is `python -m beam_jobs.pipeline`."""
import sys

from beam_jobs import pipeline

if __name__ == "__main__":
    sys.exit(pipeline.main(sys.argv[1:]))
