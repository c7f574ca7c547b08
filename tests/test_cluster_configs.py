"""The cluster configurations run the job the README documents (checked without a cluster)."""

import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _grid_command(text: str) -> list[str]:
    words = shlex.split(text)
    assert words[:3] == ["python", "-m", "jobs.grid"], words
    return words[3:]


def test_kuberay_rayjob_submits_the_demo_grid_and_cleans_up():
    from raysvc.service.gridspec import load_grid

    job = yaml.safe_load((REPO / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    args = _grid_command(spec["entrypoint"])
    assert args[0] == "jobs/configs/demo.yaml" and (REPO / args[0]).is_file()
    out = args[args.index("--out") + 1]
    assert out.startswith("s3://") and args[args.index("--storage-path") + 1].startswith("s3://")
    assert load_grid(REPO / args[0], out=out).settings.out == out  # the grid file the job names is valid
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert {"RAYSVC_CODE_REVISION", "RAYSVC_DATA"} <= set(runtime_env["env_vars"])
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # trials run on workers
    (gpu,) = cluster["workerGroupSpecs"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and gpu["maxReplicas"] >= 1


def test_aws_cluster_and_rayjob_use_the_same_job():
    aws = (REPO / "cluster" / "aws.yaml").read_text()
    job = yaml.safe_load((REPO / "cluster" / "kuberay-rayjob.yaml").read_text())
    aws_yaml = yaml.safe_load(aws)
    assert aws_yaml["available_node_types"]["head.cpu"]["resources"] == {"CPU": 0}
    entry = _grid_command(job["spec"]["entrypoint"])
    assert f"python -m jobs.grid {entry[0]}" in aws
