"""The launchers' command lines (infra/launcher_args.py, shared by both): flags after `--`
are checked by the job's real parser before anything is rendered, printed or submitted;
a refusal is one line naming the flag, exit status 2; job defaults are the job's own.

The CLI cases run the launchers as a user does, in a plain shell environment."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import yaml
from infra_paths import INFRA, ROOT, load

from beam_jobs import options
from tests.docs_util import plain_env
from trainer import config

trainer_launch = load("infra/trainer/launch.py", "infra_trainer_launch")
dataflow_launch = load("infra/dataflow/launch.py", "infra_dataflow_launch")
la = trainer_launch.la  # infra/launcher_args.py, the module both launchers import
template_metadata = dataflow_launch.template_metadata

IMAGE = "us-central1-docker.pkg.dev/my-proj/seqrec/trainer:abc123"
VERTEX = ["vertex", "--project=my-proj", "--region=us-central1", "--bucket=my-bucket",
          f"--image={IMAGE}", "--run_name=exp1"]
K8S = ["k8s", "--bucket=my-bucket", f"--image={IMAGE}", "--run_name=exp1"]
DATAFLOW = ["--project=my-proj", "--region=us-central1", "--bucket=my-bucket",
            "--job_name=timelines-1", "--service_account_email=df@my-proj.iam.gserviceaccount.com",
            "--subnetwork=regions/us-central1/subnetworks/default", "--no_use_public_ips",
            "--num_workers=2", f"--worker_image={IMAGE}"]
FLEX = ["--flex_template=gs://my-bucket/templates/seqrec.json"]


def cli(script: str, *argv: str) -> subprocess.CompletedProcess:
    """`python infra/<script> ARGV` from the repository root in a plain shell's environment."""
    return subprocess.run([sys.executable, os.path.join(INFRA, script), *argv], cwd=ROOT,
                          env=plain_env(), capture_output=True, text=True, timeout=120)


def assert_refused(result: subprocess.CompletedProcess, says: list[str]) -> None:
    """Exit status 2, nothing on stdout (nothing rendered or run), one line on stderr that
    holds each of `says`."""
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("launch.py: error: ")
    for text in says:
        assert text in line, line


# --- trainer.train flags ------------------------------------------------------------------

# (launcher argv, what its one-line error must say). Wording from the trainer's own parser
# is checked for the flag and hint it names, not letter by letter.
TRAINER_REFUSALS = [
    # absl's suggestion for a misspelt flag.
    (VERTEX + ["--print", "--", "--embeding_dim=64"],
     ["trainer.train: no flag --embeding_dim; did you mean --embedding_dim?"]),
    # absl takes no abbreviations, and neither does the check.
    (K8S + ["--print", "--", "--embed=64"], ["no flag --embed;", "--embedding_dim"]),
    # Values the trainer refuses (TrainConfig's checks, absl's types and enums).
    (VERTEX + ["--print", "--", "--epochs=0"], ["trainer.train: --epochs must be >= 1, got 0"]),
    (K8S + ["--print", "--", "--optimizer=adamw"], ["--optimizer=adamw", "adagrad|adam|sgd"]),
    (K8S + ["--print", "--", "--epochs=three"], ["--epochs=three"]),
    # The trainer would ignore a positional argument: refused.
    (K8S + ["--print", "--", "64"], ["'64': trainer.train takes only flags"]),
    # A trainer flag before `--` is not the launcher's.
    (K8S + ["--global_batch_size=12800", "--print"],
     ["--global_batch_size is a trainer.train flag: give it after `--`"]),
    # No abbreviations on the launcher's side either.
    (K8S + ["--gpus=4", "--print"],
     ["unrecognized argument --gpus=4; did you mean --gpus_per_host?"]),
    # Accepted by the trainer, but not on these machines.
    (K8S + ["--hosts=2", "--print", "--", "--strategy=mirrored"],
     ["--strategy=mirrored with --hosts=2", "--strategy=multi_worker"]),
    (K8S + ["--print", "--", "--model_dir=/tmp/run"],
     ["--model_dir='/tmp/run' is not a gs:// URI"]),
]


@pytest.mark.parametrize("argv, says", TRAINER_REFUSALS)
def test_trainer_launcher_refuses_in_one_line_before_rendering(argv, says):
    assert_refused(cli("trainer/launch.py", *argv), says)


def test_trainer_launcher_batch_check_uses_the_trainers_own_batch():
    default = config.defaults()["global_batch_size"]
    tutorial = config.PRESETS["tutorial"]["global_batch_size"]
    replicas = 24  # 3 hosts x 8 GPUs: divides neither default
    assert default % replicas and tutorial % replicas
    with pytest.raises(la.UsageError, match=f"--global_batch_size={default} does not divide "
                       f"by the {replicas} GPUs"):
        trainer_launch.prepare(K8S + ["--hosts=3"])
    with pytest.raises(la.UsageError, match=f"--global_batch_size={tutorial} does not"):
        trainer_launch.prepare(K8S + ["--hosts=3", "--", "--preset=tutorial"])
    launch = trainer_launch.prepare(K8S + ["--hosts=3", "--", "--global_batch_size=2400"])
    assert launch.config.flat()["global_batch_size"] == 2400


@pytest.mark.parametrize("target", ["vertex", "k8s"])
def test_trainer_launcher_cli_prints_the_command_outputs_and_spec(target, tmp_path):
    argv = (VERTEX if target == "vertex" else K8S) + ["--hosts=2"]
    out = tmp_path / "spec.yaml"
    result = cli("trainer/launch.py", *argv, "--print", f"--output={out}", "--",
                 "--epochs=5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if target == "vertex":
        assert lines[0].startswith("# gcloud ai custom-jobs create --project=my-proj")
    else:
        assert lines[0] == f"# kubectl apply -f {out}"
    launch = trainer_launch.prepare(argv + ["--", "--epochs=5"])
    outputs = [f"# {what}: {where}" for what, where in trainer_launch.outputs(launch.config)]
    assert lines[1:5] == outputs
    printed = list(yaml.safe_load_all(result.stdout))
    assert printed == list(yaml.safe_load_all(out.read_text()))
    assert printed == trainer_launch.render(launch)


# --- beam_jobs.pipeline flags --------------------------------------------------------------

def pipeline_command(argv: list[str]):
    """The JobConfig and Beam options of the launcher's command, parsed by the job."""
    args, job_flags = dataflow_launch.parse_args(argv)
    cmd = dataflow_launch.command(args, job_flags)
    if args.flex_template:
        (params,) = [c for c in cmd if c.startswith("--parameters=")]
        argv = ["--" + kv for kv in params[len("--parameters=^~^"):].split("~")]
    else:
        assert cmd[:3] == [sys.executable, "-m", "beam_jobs.pipeline"]
        argv = cmd[3:]
    cfg, beam_args, _ = options.parse_args(argv)
    return cfg, beam_args


@pytest.mark.parametrize("mode", [[], FLEX])
def test_dataflow_launcher_passes_no_job_flag_the_user_did_not_give(mode):
    cfg, _ = pipeline_command(DATAFLOW + mode)
    assert (cfg.input_dir, cfg.output_dir) == ("gs://my-bucket/raw/ml-1m",
                                               "gs://my-bucket/data/ml-1m")
    defaults = options.JobConfig(input_dir=cfg.input_dir, output_dir=cfg.output_dir)
    assert cfg == defaults  # every other job flag: beam_jobs.options' own default
    # The user's flags arrive, and theirs win.
    cfg, _ = pipeline_command(DATAFLOW + mode + ["--", "--num_shards=32", "--overwrite",
                                                 "--input_dir=gs://my-bucket/raw/ml-20m"])
    assert (cfg.num_shards, cfg.overwrite) == (32, True)
    assert (cfg.input_dir, cfg.output_dir) == ("gs://my-bucket/raw/ml-20m",
                                               "gs://my-bucket/data/ml-20m")
    assert dataclasses.replace(cfg, num_shards=defaults.num_shards, overwrite=False,
                               input_dir=defaults.input_dir,
                               output_dir=defaults.output_dir) == defaults


def test_dataflow_launcher_options_are_beam_options():
    _, beam_args = pipeline_command(DATAFLOW)
    assert "--runner=DataflowRunner" in beam_args
    assert f"--setup_file={os.path.join(ROOT, 'setup.py')}" in beam_args
    assert f"--sdk_container_image={IMAGE}" in beam_args
    # The job's parser refuses what no Beam options class defines (so this check can fail).
    with pytest.raises(options.FlagError, match="--no_such_option"):
        options.parse_args(["--input_dir=x", "--output_dir=y", "--no_such_option=1"])


@pytest.mark.parametrize("argv, says", [
    (DATAFLOW + ["--print", "--", "--num_shard=32"],
     ["beam_jobs.pipeline: ", "--num_shard;", "did you mean --num_shards?"]),
    (DATAFLOW + ["--print", "--", "--num_shards=0"], ["beam_jobs.pipeline: --num_shards"]),
    (DATAFLOW + ["--print", "--input_dir=gs://my-bucket/raw/x"],
     ["--input_dir is a beam_jobs.pipeline flag: give it after `--`"]),
    (DATAFLOW + ["--print", "--", "--input_dir=data/sample"],
     ["--input_dir=data/sample: Dataflow workers cannot reach local files"]),
    (DATAFLOW + FLEX + ["--print", "--", "--experiments=use_runner_v2"],
     ["--experiments is not a parameter of the Flex Template"]),
    (DATAFLOW + FLEX + ["--dry_run"], ["--dry_run builds the job locally"]),
])
def test_dataflow_launcher_refuses_in_one_line(argv, says):
    assert_refused(cli("dataflow/launch.py", *argv), says)


def test_dataflow_launcher_cli_prints_the_command():
    result = cli("dataflow/launch.py", *DATAFLOW, "--print")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1:3] == ["-m", "beam_jobs.pipeline"]
    assert "--runner=DataflowRunner" in result.stdout.split()


def test_flex_template_parameters_are_the_jobs_flags_as_it_declares_them():
    params = {p["name"]: p for p in template_metadata.parameters()}
    parser = options.make_parser()
    declared = {a.dest: a for a in parser._actions if a.option_strings}
    for name, param in params.items():
        if name == "sdk_container_image":  # the one Beam option: the workers' image
            continue
        action = declared[name]
        # Help text (with the default it states) and choices come from the job's parser.
        assert param["helpText"] == action.help, name
        for choice in action.choices or ():
            assert param["regexes"] == [f"^({'|'.join(map(str, action.choices))})$"], name
            assert str(choice) in param["regexes"][0]
        assert param.get("isOptional", False) == (name not in ("input_dir", "output_dir"))
    # Every flag a user can give, but those the template leaves out on purpose; by name:
    # a boolean's --noNAME spelling is its parameter's "false" (--NAME=false parses too).
    spelled = {s[2:] for s in options.flag_names(parser)}
    user_flags = {a.dest for a in parser._actions if a.option_strings and a.dest in spelled}
    assert set(params) - {"sdk_container_image"} == user_flags - template_metadata.LEFT_OUT
    # The generator's output is what gcloud reads (--metadata-file).
    result = subprocess.run(
        [sys.executable, os.path.join(INFRA, "dataflow", "flex_template",
                                      "template_metadata.py")],
        cwd="/", env=plain_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == template_metadata.metadata()


def test_flex_template_launch_parameters_parse_as_the_job():
    cfg, beam_args = pipeline_command(DATAFLOW + FLEX + ["--", "--num_shards=16",
                                                         "--split=random"])
    assert cfg.num_shards == 16 and cfg.split == "random"
    assert beam_args == [f"--sdk_container_image={IMAGE}"]


def test_flex_template_entry_file_hands_its_flags_to_the_pipeline():
    # The launcher container runs main.py with the template parameters as flags; --help
    # shows they reach beam_jobs.pipeline's parser (run from the image's install path).
    env = dict(plain_env(), PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, os.path.join(INFRA, "dataflow", "flex_template", "main.py"), "--help"],
        capture_output=True, text=True, timeout=120, env=env, cwd=INFRA)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--num_shards" in result.stdout


# --- the shared module ----------------------------------------------------------------------

def test_flag_value_and_flag_values_read_job_flags_as_the_parsers_do():
    argv = ["--input_dir=a", "--num_shards", "3", "--overwrite", "--input_dir=b"]
    assert la.flag_value(argv, "input_dir") == "b"  # the last one wins
    assert la.flag_value(argv, "num_shards") == "3"
    assert la.flag_value(argv, "overwrite") == ""
    assert la.flag_value(argv, "output_dir") is None
    assert la.flag_values(["--num_shards=3", "--overwrite"]) == [("num_shards", "3"),
                                                                 ("overwrite", "true")]
    with pytest.raises(la.UsageError, match="'3': give job flags as --name=value"):
        la.flag_values(["--num_shards", "3"])


def test_both_launchers_parse_with_the_shared_module():
    assert la.__file__ == os.path.join(INFRA, "launcher_args.py")
    for launcher in (trainer_launch, dataflow_launch):
        assert launcher.la is la
        assert launcher.make_parser().allow_abbrev is False
