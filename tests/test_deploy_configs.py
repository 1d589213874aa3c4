"""The deployment files (cluster/*.yaml, cluster/k8s/, cluster/Dockerfile, docs/DEPLOY.md) against the code they drive.

No cloud call, no Kubernetes, no Docker daemon: Ray's own launcher validation for the cluster YAMLs, a structural
reading of the KubeRay manifests and the Dockerfile, and every `python jobs/NAME.py ...` command line in them (and in
docs/DEPLOY.md) parsed by that job's own argument parser, so manifests, docs and CLIs cannot drift apart.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from badinput import job

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_FILES = [REPO / "cluster" / "aws-gpu.yaml", REPO / "cluster" / "onprem.yaml"]
K8S_FILES = sorted((REPO / "cluster" / "k8s").glob("*.yaml"))
DOCKERFILE = REPO / "cluster" / "Dockerfile"
DEPLOY_DOC = REPO / "docs" / "DEPLOY.md"
# What must never reach a node or an image from a checkout: local data, runs, MLflow stores, cluster state, venvs.
LOCAL_STATE = {"data", "runs", "mlflow.db", "mlruns", ".cluster", ".venv"}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|API_?KEY|ACCESS_?KEY", re.IGNORECASE)


def load_launcher(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def k8s_objects() -> list[dict]:
    return [doc for path in K8S_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> list[dict]:
    return [obj for obj in k8s_objects() if obj["kind"] == kind]


def launcher_commands(config: dict) -> list[str]:
    """Every shell command the launcher runs, top level and per node type."""
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    commands = [c for key in keys for c in config.get(key, [])]
    for node_type in config.get("available_node_types", {}).values():
        commands += [c for key in keys for c in node_type.get(key, [])]
    return commands


def makefile_torch_pin() -> str:
    match = re.search(r"pip install -q torch==([\w.+]+)", (REPO / "Makefile").read_text())
    assert match, "Makefile: no `pip install -q torch==VERSION` in the setup recipe"
    return match.group(1)


# --- command lines that run corrhash jobs ----------------------------------------------------------------------

JOB_SCRIPT = re.compile(r"(?:^|/)jobs/(\w+)\.py$")
SHELL_OPERATORS = {";", "&&", "||", "|", "&", ">", ">>", "<", "(", ")"}


def job_invocations(command: str) -> list[tuple[str, list[str]]]:
    """(job name, argv) of each `python .../jobs/NAME.py ARGS` in a shell command line."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    tokens = list(lexer)
    found = []
    for i, token in enumerate(tokens[:-1]):
        match = JOB_SCRIPT.search(tokens[i + 1])
        if Path(token).name.startswith("python") and match:
            argv = []
            for arg in tokens[i + 2:]:
                if arg in SHELL_OPERATORS:
                    break
                argv.append(arg)
            found.append((match.group(1), argv))
    return found


def doc_command_lines(text: str) -> list[str]:
    """The shell lines of a Markdown file's fenced blocks, backslash continuations joined."""
    lines = []
    for block in re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", text, re.DOTALL):
        lines += [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and
                  not line.lstrip().startswith("#")]
    return lines


def parsed(name: str, argv: list[str], where: str):
    """What jobs/NAME.py's own `parse_args` makes of `argv`; a parser error fails the test naming `where`."""
    module = job(name)
    assert hasattr(module, "parse_args"), f"{where}: jobs/{name}.py has no parse_args() to check its command line with"
    try:
        return module.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `jobs/{name}.py {shlex.join(argv)}` is refused by its parser (exit {exc.code})")


def all_job_commands() -> list[tuple[str, str, list[str]]]:
    """(where, job name, argv) of every job command line in the launcher YAMLs, the KubeRay manifests and DEPLOY.md."""
    found = []
    for path in LAUNCHER_FILES:
        for command in launcher_commands(load_launcher(path)):
            found += [(path.name, name, argv) for name, argv in job_invocations(command)]
    for obj in by_kind("RayJob"):
        found += [(f"RayJob {obj['metadata']['name']}", name, argv)
                  for name, argv in job_invocations(obj["spec"]["entrypoint"])]
    for line in doc_command_lines(DEPLOY_DOC.read_text()):
        found += [("docs/DEPLOY.md", name, argv) for name, argv in job_invocations(line)]
    return found


def test_job_invocations_reads_shell_lines():
    line = ("ray job submit --working-dir . -- python jobs/tune.py --data 's3://b/20ng' --bits 64 "
            "&& python3 /opt/corrhash/jobs/train.py --local --out x; echo done")
    assert job_invocations(line) == [("tune", ["--data", "s3://b/20ng", "--bits", "64"]),
                                     ("train", ["--local", "--out", "x"])]
    assert job_invocations("ray start --head --port=6379") == []


def test_every_job_command_line_parses_with_its_own_parser():
    commands = all_job_commands()
    wheres = {where for where, _, _ in commands}
    # Not vacuous: the RayJob and the guide both run a tune.
    assert any(w.startswith("RayJob") for w in wheres) and "docs/DEPLOY.md" in wheres, wheres
    for where, name, argv in commands:
        parsed(name, argv, where)


def test_parse_check_catches_a_drifted_flag():
    with pytest.raises(pytest.fail.Exception, match="refused by its parser"):
        parsed("tune", ["--data", "s3://b/20ng", "--gpus-per-worker", "1"], "a drifted manifest")


# --- Ray cluster launcher -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_config_passes_rays_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_launcher(path)
    # What `ray up` does before it talks to a cloud: defaults filled in, node types settled, schema checked.
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    head_type = prepared["head_node_type"]
    assert prepared["available_node_types"][head_type]["resources"].get("GPU", 0) == 0
    if path.name == "aws-gpu.yaml":
        gpu = prepared["available_node_types"]["gpu"]
        assert (gpu["min_workers"], gpu["max_workers"]) == (0, 4), "GPU workers autoscale from 0 to 4"
        assert gpu["resources"]["GPU"] == 1 and gpu["node_config"]["InstanceType"] == "g5.xlarge"
        assert prepared["available_node_types"][head_type]["resources"] == {"CPU": 0}


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_token_auth_and_loopback_dashboard(path):
    config = load_launcher(path)
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert "ray start --head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start
    # The token travels as a file from the user's machine, lands 0600, and every Ray process reads it by path.
    token_mounts = [remote for remote in config["file_mounts"] if remote.endswith("auth_token")]
    assert len(token_mounts) == 1, config["file_mounts"]
    remote = token_mounts[0]
    assert config["file_mounts"][remote].startswith("~/"), "the token comes from a file on the user's machine"
    setup = "\n".join(config["setup_commands"])
    assert f"chmod 600 {remote}" in setup
    assert "RAY_AUTH_MODE=token" in setup
    assert f'RAY_AUTH_TOKEN_PATH="{remote.replace("~", "$HOME", 1)}"' in setup
    everything = "\n".join(launcher_commands(config))
    assert "RAY_AUTH_TOKEN=" not in everything and "RAY_AUTH_MODE=disabled" not in everything
    assert "0.0.0.0" not in everything


def rsync_excluded(path: str, excludes: list[str]) -> bool:
    """Whether rsync's `--exclude PATTERN`s (plain names, or anchored at the transfer's root with "/") skip `path`."""
    parts = path.split("/")
    for pattern in excludes:
        assert not any(c in pattern for c in "*?["), f"{pattern}: wildcards are not modelled here"
        if pattern.startswith("/"):
            anchored = pattern[1:].split("/")
            if parts[:len(anchored)] == anchored:
                return True
        elif "/" not in pattern and pattern in parts:
            return True
    return False


def test_rsync_excluded_models_anchoring():
    assert rsync_excluded("data/20ng/manifest.json", ["/data"])
    assert not rsync_excluded("platform/corrhash/data/shards.py", ["/data"])
    assert rsync_excluded("platform/corrhash/data/shards.py", ["data"])
    assert rsync_excluded("jobs/__pycache__/tune.pyc", ["__pycache__"])


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_installs_like_the_readme(path):
    config = load_launcher(path)
    assert config["file_mounts"]["~/corrhash"] == ".", "the checkout goes to ~/corrhash on every node"
    excludes = config["rsync_exclude"]
    assert all(rsync_excluded(name, excludes) for name in LOCAL_STATE), "local state stays on your machine"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    dropped = [path for path in tracked if rsync_excluded(path, excludes)]
    assert not dropped, f"rsync_exclude drops files of the checkout: {dropped[:5]}"
    # `make setup` itself (torch 2.13.0 first, then the project): the same steps by construction.
    assert config["head_setup_commands"][0] == "make -C ~/corrhash setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
    assert config["worker_setup_commands"][0] == "make -C ~/corrhash setup", "GPU workers: PyPI's CUDA build"
    assert "~/corrhash/.venv/bin" in "\n".join(config["setup_commands"]).replace("$HOME", "~")


# --- KubeRay -----------------------------------------------------------------------------------------------------

def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def cpu_quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_k8s_manifests_are_kuberay_v1():
    objects = k8s_objects()
    assert {obj["kind"] for obj in objects} == {"RayCluster", "RayJob", "RayService"}
    for obj in objects:
        assert obj["apiVersion"] == "ray.io/v1" and obj["metadata"]["name"]
    for cluster in by_kind("RayCluster"):
        spec = cluster["spec"]
        assert spec["rayVersion"] == "2.60.0"
        assert spec["headGroupSpec"]["template"]["spec"]["containers"]
        for group in spec["workerGroupSpecs"]:
            assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
            assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


SERVE_CONFIG = REPO / "cluster" / "serve-config.yaml"


def serve_configs() -> list[tuple[str, dict]]:
    """(where, Serve config) of cluster/serve-config.yaml and every RayService's serveConfigV2."""
    return [(str(SERVE_CONFIG), yaml.safe_load(SERVE_CONFIG.read_text()))] + [
        (f"RayService {svc['metadata']['name']}", yaml.safe_load(svc["spec"]["serveConfigV2"]))
        for svc in by_kind("RayService")]


@pytest.mark.parametrize("where, config", serve_configs(), ids=[w for w, _ in serve_configs()])
def test_serve_configs_pass_rays_schema_and_the_builders_arguments(where, config):
    """The Serve config file and the RayService (ecosystem review t4, N8) name the typed builder, with arguments it
    takes (ServeArgs validates them: a misspelt or unknown key fails here, not at deploy time)."""
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from corrhash.commands.serve import build
    from corrhash.serve.app import ServeArgs

    schema = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    assert schema.applications, where
    for app in config["applications"]:
        module, _, name = app["import_path"].partition(":")
        assert getattr(importlib.import_module(module), name) is build, where
        ServeArgs.model_validate(app["args"])
        assert [d["name"] for d in app["deployments"]] == ["search"], where


def test_rayservice_cluster_keeps_the_clusters_rules():
    services = by_kind("RayService")
    assert services
    for service in services:
        spec = service["spec"]["rayClusterConfig"]
        assert spec["rayVersion"] == "2.60.0" and spec["authOptions"]["mode"] == "token"
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        images = {c["image"] for t in templates for c in containers(t)}
        assert len(images) == 1 and next(iter(images)).split("/")[-1].startswith("corrhash:"), images
        for template in templates:
            assert template["spec"]["securityContext"]["runAsNonRoot"] is True
            for env in [e for c in containers(template) for e in c.get("env", [])]:
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env


def test_k8s_image_is_the_dockerfile_s_and_gpus_are_requested_and_limited():
    for cluster in by_kind("RayCluster"):
        spec = cluster["spec"]
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        images = {c["image"] for t in templates for c in containers(t)}
        assert len(images) == 1 and next(iter(images)).split("/")[-1].startswith("corrhash:"), images
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if "nvidia.com/gpu" in containers(g["template"])[0]["resources"].get("limits", {})]
        assert gpu_groups, "a GPU worker group"
        for group in gpu_groups:
            resources = containers(group["template"])[0]["resources"]
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
            assert resources["requests"]["cpu"] == resources["limits"]["cpu"], "Ray counts the limit"
        for template in templates:
            assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_k8s_ray_token_and_dashboard():
    for cluster in by_kind("RayCluster"):
        spec = cluster["spec"]
        # Token auth from a Secret the user creates: KubeRay injects it into every container and uses it itself.
        assert spec["authOptions"] == {"mode": "token", "secretName": spec["authOptions"]["secretName"]}
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        assert not head.get("enableIngress", False)
        assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"


def test_k8s_secrets_come_from_secret_objects_only():
    assert not by_kind("Secret"), "Secrets are created by the user (docs/DEPLOY.md), never kept in the repo"
    for cluster in by_kind("RayCluster"):
        spec = cluster["spec"]
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        envs = [e for t in templates for c in containers(t) for e in c.get("env", [])]
        for env in envs:
            if SECRET_NAME.search(env["name"]):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
        head_env = {e["name"]: e for e in containers(spec["headGroupSpec"]["template"])[0]["env"]}
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "secretKeyRef" in head_env[name]["valueFrom"], name


def trial_fits(options, node_cpus: float, node_gpus: float, nodes: int, where: str) -> None:
    """Trials of `options` pack the GPU nodes exactly: whole trials per GPU, their CPUs within the node's, and
    --max-concurrent trials at once fit the group."""
    assert options.gpus_per_trial > 0, f"{where}: a GPU cluster's trials need --gpus-per-trial"
    per_node = node_gpus / options.gpus_per_trial
    assert per_node >= 1 and per_node == int(per_node), f"{where}: {node_gpus} GPU a node / {options.gpus_per_trial}"
    assert per_node * options.cpus_per_trial <= node_cpus, f"{where}: {per_node:g} trials need more than {node_cpus} CPUs"
    assert options.max_concurrent <= per_node * nodes, f"{where}: --max-concurrent over {per_node * nodes:g} slots"


def test_rayjob_resources_match_its_cluster_worker_group():
    clusters = {c["metadata"]["name"]: c for c in by_kind("RayCluster")}
    jobs = by_kind("RayJob")
    assert jobs
    for rayjob in jobs:
        where = f"RayJob {rayjob['metadata']['name']}"
        cluster = clusters[rayjob["spec"]["clusterSelector"]["ray.io/cluster"]]
        (name, argv), = job_invocations(rayjob["spec"]["entrypoint"])
        assert name == "tune"
        options = parsed(name, argv, where)[3]
        gpu_group, = [g for g in cluster["spec"]["workerGroupSpecs"]
                      if "nvidia.com/gpu" in containers(g["template"])[0]["resources"]["requests"]]
        requests = containers(gpu_group["template"])[0]["resources"]["requests"]
        trial_fits(options, cpu_quantity(requests["cpu"]), float(requests["nvidia.com/gpu"]),
                   gpu_group["maxReplicas"], where)


def test_deploy_doc_lists_every_port_the_files_open():
    table = DEPLOY_DOC.read_text().split("## What listens where", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\b\d{2,5}\b", table))
    ports = set()
    for path in LAUNCHER_FILES:
        config = load_launcher(path)
        start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
        ports |= set(re.findall(r"--[\w-]*port=(\d+)", start)) | set(re.findall(r":(\d+)\b", start))
    for cluster in by_kind("RayCluster"):
        spec = cluster["spec"]
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        ports |= {str(p["containerPort"]) for t in templates for c in containers(t) for p in c.get("ports", [])}
    assert ports and ports <= listed, f"ports missing from docs/DEPLOY.md's table: {sorted(ports - listed)}"
    assert {"5000", "5432", "9090"} <= listed, "MLflow, PostgreSQL and Prometheus"


def test_deploy_doc_tunes_fit_the_launcher_cluster():
    config = load_launcher(LAUNCHER_FILES[0])
    gpu = config["available_node_types"]["gpu"]
    tunes = [(where, argv) for where, name, argv in all_job_commands() if where == "docs/DEPLOY.md" and name == "tune"]
    assert tunes
    for where, argv in tunes:
        options = parsed("tune", argv, where)[3]
        trial_fits(options, gpu["resources"]["CPU"], gpu["resources"]["GPU"], gpu["max_workers"], where)


# --- the image ---------------------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of cluster/Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def test_dockerfile_pins_its_base_and_runs_as_a_non_root_user():
    instructions = dockerfile_instructions()
    base = [args for op, args in instructions if op == "FROM"]
    assert len(base) == 1 and re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-[\w.-]+", base[0]), base
    users = [i for i, (op, _) in enumerate(instructions) if op == "USER"]
    starts = [i for i, (op, _) in enumerate(instructions) if op in ("CMD", "ENTRYPOINT")]
    assert users and starts and users[-1] < min(starts), "USER is set before the entrypoint"
    assert instructions[users[-1]][1].split(":")[0] not in ("root", "0")


def test_dockerfile_bakes_in_no_secret():
    for op, args in dockerfile_instructions():
        if op in ("ARG", "ENV"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split("=")[0].split()[0]]
            assert not any(SECRET_NAME.search(n) for n in names), f"{op} {args}"


def test_dockerfile_installs_like_the_makefile():
    runs = [args for op, args in dockerfile_instructions() if op == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if "pip install" in r and "torch==" in r)
    project_step = next(i for i, r in enumerate(runs) if re.search(r"pip install .*-e \.", r))
    assert torch_step < project_step, "torch first, then the project"
    assert f"torch=={makefile_torch_pin()} " in runs[torch_step] + " "
    assert "python3 -m venv .venv" in runs[torch_step], "the Makefile's venv, in the project's folder"
    # The same order in the Makefile's recipe, so mirroring it means something.
    recipe = (REPO / "Makefile").read_text()
    assert recipe.index("torch==") < recipe.index("pip install -q -e")


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert LOCAL_STATE <= ignored, LOCAL_STATE - ignored


# --- no secret in any deployment file ----------------------------------------------------------------------------

DEPLOY_FILES = [*LAUNCHER_FILES, *K8S_FILES, DOCKERFILE, REPO / ".dockerignore", DEPLOY_DOC]
# NAME=VALUE with a secret-like name: only a reference ($VAR, "$VAR", a command's output) or a *_PATH may follow.
ASSIGNMENT = re.compile(r"\b([A-Z][A-Z0-9_]*)=(\S*)")
LONG_HEX = re.compile(r"\b[0-9a-fA-F]{32,}\b")
LONG_BASE64 = re.compile(r"(?<![\w/+=-])(?=[A-Za-z0-9+=]*\d)(?=[A-Za-z0-9+=]*[a-z])(?=[A-Za-z0-9+=]*[A-Z])"
                         r"[A-Za-z0-9+=]{32,}(?![\w/+=-])")


def secret_findings(text: str) -> list[str]:
    findings = LONG_HEX.findall(text) + LONG_BASE64.findall(text)
    for name, value in ASSIGNMENT.findall(text):
        if SECRET_NAME.search(name) and not name.endswith("_PATH") and value and not value.lstrip("\"'").startswith("$"):
            findings.append(f"{name}={value}")
    return findings


def test_secret_scan_finds_planted_secrets():
    assert secret_findings("env RAY_AUTH_TOKEN=abc ray job submit")
    assert secret_findings("token: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
    assert secret_findings("password: Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg==")
    assert not secret_findings('RAY_AUTH_TOKEN_PATH="$HOME/.ray/x" MLFLOW_TRACKING_PASSWORD="$(cat f)" ubuntu-24.04')


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_secret_in_deployment_files(path):
    assert secret_findings(path.read_text()) == []
