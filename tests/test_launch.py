"""launch/tpu_pod.sh and launch/slurm.sbatch: the --dry_run commands, in order, and bad usage."""
import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, env=None):
  full_env = dict(os.environ, **(env or {}))
  for key in ("SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_SUBMIT_DIR"):
    if env is None or key not in env:
      full_env.pop(key, None)
  return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                        capture_output=True, text=True, env=full_env, timeout=60)


def _commands(stdout):
  return [shlex.split(line) for line in stdout.splitlines() if line.strip()]


def test_tpu_pod_dry_run_creates_copies_installs_runs_gathers_and_deletes():
  p = _run("tpu_pod.sh", "--name=pit-a", "--zone=us-west4-a", "--accelerator=v5litepod-16",
           "--project=proj", "--dry_run", "--", "configs/sft.py:llama7b", "gs://b/run",
           "--config.train.steps=10")
  assert p.returncode == 0, p.stderr
  cmds = _commands(p.stdout)
  verbs = [c[4] if c[0] == "gcloud" else c[0] for c in cmds]
  assert verbs == ["create", "bash", "scp", "ssh", "ssh", "mkdir", "scp", "delete"]
  create = cmds[0]
  assert "--accelerator-type=v5litepod-16" in create and "--zone=us-west4-a" in create
  assert "--project=proj" in create and "pit-a" in create
  assert "git archive" in cmds[1][2]
  install, launch = cmds[3], cmds[4]
  assert "--worker=all" in install and "--worker=all" in launch
  assert "jax[tpu]==" in next(a for a in install if a.startswith("--command="))
  run_cmd = next(a for a in launch if a.startswith("--command="))
  assert "launch/multihost.sh configs/sft.py:llama7b gs://b/run --config.train.steps=10" in run_cmd
  assert cmds[-1][4] == "delete" and "pit-a" in cmds[-1]


def test_tpu_pod_reuse_and_keep_never_create_or_delete():
  for flag in ("--reuse", "--keep"):
    p = _run("tpu_pod.sh", "--name=pit-b", "--zone=z", "--accelerator=v4-8", flag, "--dry_run",
             "--", "configs/sft.py", "gs://b/run")
    assert p.returncode == 0, p.stderr
    verbs = [c[4] for c in _commands(p.stdout) if c[0] == "gcloud"]
    assert "delete" not in verbs
    assert ("create" in verbs) == (flag == "--keep")


@pytest.mark.parametrize("args,message", [
    (["--zone=z", "--accelerator=v4-8", "--dry_run", "--", "c", "w"], "--name is required"),
    (["--name=n", "--accelerator=v4-8", "--dry_run", "--", "c", "w"], "--zone is required"),
    (["--name=n", "--zone=z", "--dry_run", "--", "c", "w"], "--accelerator is required"),
    (["--name=n", "--zone=z", "--accelerator=v4-8", "--dry_run", "--", "c"], "CONFIG WORKDIR"),
    (["--name=n", "--zone=z", "--bogus"], "unknown option --bogus"),
])
def test_tpu_pod_bad_usage_names_the_problem(args, message):
  p = _run("tpu_pod.sh", *args)
  assert p.returncode == 2 and message in p.stderr and not p.stdout


def test_slurm_dry_run_one_task_per_node_coordinator_on_the_first_node():
  p = _run("slurm.sbatch", "--dry_run", "configs/dpo.py", "/shared/runs/x", "--config.a=1",
           env={"SLURM_JOB_NODELIST": "gpu[07-10]", "SLURM_NNODES": "4"})
  assert p.returncode == 0, p.stderr
  (cmd,) = _commands(p.stdout)
  assert cmd[0] == "srun" and "--nodes=4" in cmd and "--ntasks=4" in cmd
  assert "--ntasks-per-node=1" in cmd
  inner = cmd[-1]
  assert "COORDINATOR=gpu07:12355" in inner and "NUM_PROCESSES=4" in inner
  assert "PROCESS_ID=$SLURM_PROCID" in inner
  assert inner.endswith("launch/multihost.sh configs/dpo.py /shared/runs/x --config.a=1 ")


def test_slurm_bad_usage():
  p = _run("slurm.sbatch", "--dry_run", "configs/dpo.py")
  assert p.returncode == 2 and "CONFIG WORKDIR" in p.stderr
