"""deploy/ and docs/deploy.md: every file parses, and the fields rlplat relies on are there and agree with the specs.

Nothing here starts a cluster, a container or a server; tests/e2e/test_ray_job.py runs `ray job submit` for real.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlplat.config import RunConfig, flatten, load_config, to_dict

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
DOC = ROOT / "docs" / "deploy.md"
CLUSTER_SPECS = {"1 GPU": ROOT / "configs/cluster_1gpu.yaml", "8 GPUs": ROOT / "configs/cluster_8gpu.yaml"}
IMAGE_ROOT = "/opt/rlplat/"  # where deploy/Dockerfile puts the repository's configs/
RAY_MINOR = "2.60"  # pyproject.toml pins ray>=2.60,<2.61


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(path: Path) -> dict:
    docs = _docs(path)
    assert len(docs) == 1 and isinstance(docs[0], dict), f"{path}: expected one YAML mapping"
    return docs[0]


def _compose_default(value: str) -> str:
    """Resolve docker compose `${VAR:-default}` to its default and `${VAR}` / `${VAR:?msg}` to `<VAR>`."""
    value = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", value)
    return re.sub(r"\$\{(\w+)(:\?[^}]*)?\}", r"<\1>", value)


def _spec_keys(spec: Path) -> dict[str, Any]:
    """The dotted keys a cluster spec sets itself (not through `base:`)."""
    raw = yaml.safe_load(spec.read_text())
    raw.pop("base")
    return flatten(raw)


def _loaded(cfg: RunConfig, key: str) -> Any:
    return flatten(to_dict(cfg))[key]


# ------------------------------------------------------------------------------------------------ every YAML parses
ALL_YAML = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_deploy_has_the_four_pieces() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    assert {"ray-cluster.yaml", "kuberay-rayjob.yaml", "Dockerfile", "mlflow/docker-compose.yaml"} <= names


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_deploy_yaml_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


# ------------------------------------------------------------------------------------------------ ray up launcher
@pytest.fixture(scope="module")
def launcher() -> dict:
    return _one(DEPLOY / "ray-cluster.yaml")


def test_launcher_passes_rays_own_validation(launcher: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config  # what `ray up` runs first

    validate_config(prepare_config(launcher))


def test_launcher_head_dashboard_on_localhost_with_token_auth(launcher: dict) -> None:
    head = " ".join(launcher["head_start_ray_commands"])
    assert "ray start --head" in head
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert "RAY_AUTH_MODE=token" in head
    assert "RAY_AUTH_MODE=token" in " ".join(launcher["worker_start_ray_commands"])
    remote_token = "~/.ray/auth_token"
    assert launcher["file_mounts"].get(remote_token) == "~/.ray/auth_token", "the token must reach every node"


def test_launcher_node_types(launcher: dict) -> None:
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "CPU-only actors must not be placed on the GPU-less head"
    gpu_types = {n: t for n, t in types.items() if t.get("resources", {}).get("GPU", 0) > 0}
    assert sorted(t["resources"]["GPU"] for t in gpu_types.values()) == [1, 8]  # the two documented layouts
    for t in types.values():
        assert t["node_config"]["InstanceType"] and t["node_config"]["ImageId"]


def test_launcher_installs_rlplat_gpu_extra_and_the_tiny_model(launcher: dict) -> None:
    setup = "\n".join(launcher["setup_commands"])
    assert 'pip install -q ".[gpu]"' in setup and "cd ~/rlplat" in setup
    assert launcher["file_mounts"].get("~/rlplat") == "."
    assert "torch==2.11.0" in setup and "whl/cu130" in setup
    assert "python3.12 -m venv" in setup
    for spec in CLUSTER_SPECS.values():
        assert f"rlplat model tiny {load_config(spec).model.path}" in setup


# ------------------------------------------------------------------------------------------------ KubeRay RayJob
@pytest.fixture(scope="module")
def rayjob() -> dict:
    docs = [d for d in _docs(DEPLOY / "kuberay-rayjob.yaml") if d.get("kind") == "RayJob"]
    assert len(docs) == 1
    return docs[0]


def _containers(rayjob: dict) -> list[tuple[str, dict]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    out = [("head", c) for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    for group in cluster["workerGroupSpecs"]:
        out += [(group["groupName"], c) for c in group["template"]["spec"]["containers"]]
    return out


def test_rayjob_entrypoint_runs_a_shipped_spec(rayjob: dict) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1"
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "rlplat", "train"]
    spec = argv[4]
    assert spec.startswith(IMAGE_ROOT), "the spec comes from the image"
    overrides = [a for a in argv[5:] if "=" in a and not a.startswith("-")]
    cfg = load_config(ROOT / spec.removeprefix(IMAGE_ROOT), overrides)  # unknown override keys fail here
    assert cfg.tracking.uri.startswith("http"), "the run logs to an MLflow server"
    assert set(argv[5:]) - set(overrides) <= {"--no-progress"}


def test_rayjob_cluster(rayjob: dict) -> None:
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert str(cluster["rayVersion"]).startswith(RAY_MINOR)
    assert cluster["authOptions"]["mode"] == "token"
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    containers = _containers(rayjob)
    assert len({c["image"] for _, c in containers}) == 1 and containers[0][1]["image"]
    head_ports = {p["name"]: p["containerPort"] for p in containers[0][1]["ports"]}
    assert head_ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
    workers = [c for group, c in containers if group != "head"]
    assert workers and all(int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1 for c in workers)
    for _, c in containers:
        assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_rayjob_holds_no_token(rayjob: dict) -> None:
    text = (DEPLOY / "kuberay-rayjob.yaml").read_text()
    assert "kind: Secret" not in text and "RAY_AUTH_TOKEN" not in text
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"]["secretName"]


# ------------------------------------------------------------------------------------------------ Dockerfile
@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_base_python_and_gpu_extra(dockerfile: list[tuple[str, str]]) -> None:
    args = dict(a.split("=", 1) for i, a in dockerfile if i == "ARG" and "=" in a)
    base = next(a for i, a in dockerfile if i == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-runtime-ubuntu24\.04", base), base
    runs = " ".join(a for i, a in dockerfile if i == "RUN")
    assert "python3.12 -m venv" in runs
    assert 'pip install ".[gpu]"' in runs
    assert args["TORCH_VERSION"] == "2.11.0" and args["TORCH_INDEX_URL"].endswith("/cu130")


def test_dockerfile_runs_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    users = [a for i, a in dockerfile if i == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    first_user = next(n for n, (i, _) in enumerate(dockerfile) if i == "USER")
    assert not any(i == "RUN" and "pip install" in a for i, a in dockerfile[:first_user]), "pip as root"


def test_dockerfile_holds_no_secrets(dockerfile: list[tuple[str, str]]) -> None:
    for instr, a in dockerfile:
        if instr in ("ENV", "ARG"):
            assert not re.search(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY", a, re.I), a
    assert not any(i in ("COPY", "ADD") and ("auth_token" in a or ".env" in a) for i, a in dockerfile)


def test_dockerfile_copies_what_the_specs_need(dockerfile: list[tuple[str, str]]) -> None:
    copies = " ".join(a for i, a in dockerfile if i == "COPY")
    for part in ("pyproject.toml", "rlplat", "configs"):
        assert part in copies
    runs = " ".join(a for i, a in dockerfile if i == "RUN")
    for spec in CLUSTER_SPECS.values():
        assert f"rlplat model tiny {load_config(spec).model.path}" in runs


# ------------------------------------------------------------------------------------------------ MLflow server
@pytest.fixture(scope="module")
def compose() -> dict:
    return _one(DEPLOY / "mlflow" / "docker-compose.yaml")


def test_mlflow_has_database_backend_and_artifact_root(compose: dict) -> None:
    env = compose["services"]["mlflow"]["environment"]
    backend = _compose_default(env["MLFLOW_BACKEND_STORE_URI"])
    assert backend.startswith("postgresql") and "@postgres:5432/" in backend
    assert "<POSTGRES_PASSWORD>" in backend, "the password comes from the environment, never the file"
    assert _compose_default(env["MLFLOW_ARTIFACTS_DESTINATION"]) == "/mlartifacts"
    assert any(v.endswith(":/mlartifacts") for v in compose["services"]["mlflow"]["volumes"])
    assert "--serve-artifacts" in compose["services"]["mlflow"]["command"]
    assert compose["services"]["postgres"]["image"].startswith("postgres:")
    postgres_password = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert _compose_default(postgres_password) == "<POSTGRES_PASSWORD>"


def test_mlflow_published_on_localhost_only(compose: dict) -> None:
    ports = [_compose_default(p) for p in compose["services"]["mlflow"]["ports"]]
    assert ports == ["127.0.0.1:5000:5000"]
    assert "ports" not in compose["services"]["postgres"], "the database stays on the compose network"


def test_mlflow_server_matches_the_specs(compose: dict) -> None:
    port = _compose_default(compose["services"]["mlflow"]["ports"][0]).split(":")[1]
    for spec in CLUSTER_SPECS.values():
        assert load_config(spec).tracking.uri == f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------------ docs/deploy.md
@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def _submit_block(doc: str) -> str:
    """The first fenced block of the "Submitting a spec" section."""
    return doc.split("## Submitting a spec", 1)[1].split("```", 2)[1]


def _runtime_env(block: str) -> dict[str, Any]:
    found = re.search(r"--runtime-env-json '([^']*)'", block)
    assert found, "the submit command passes --runtime-env-json"
    return json.loads(found.group(1))


def _layout_table(doc: str) -> dict[str, list[str]]:
    """Rows of the GPU-layout table: `key` -> [1-GPU cell, 8-GPU cell], backticks stripped."""
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and line.startswith("| `") and all(cells):
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_doc_layout_table_shows_every_key_of_the_cluster_specs(doc: str) -> None:
    assert "| spec key | 1 GPU (`configs/cluster_1gpu.yaml`) | 8 GPUs (`configs/cluster_8gpu.yaml`) |" in doc
    section = doc.split("## GPU layouts", 1)[1].split("\n## ", 1)[0]
    table = _layout_table(section)
    keys = set().union(*(_spec_keys(p) for p in CLUSTER_SPECS.values()))
    assert set(table) == keys, "the table lists exactly the keys the cluster specs set"
    for column, (layout, spec) in enumerate(CLUSTER_SPECS.items()):
        cfg = load_config(spec)
        for key in keys:
            assert yaml.safe_load(table[key][column]) == _loaded(cfg, key), f"{layout}: {key}"


def test_doc_names_only_existing_spec_keys_unless_planned(doc: str) -> None:
    sections = {f.name for f in RunConfig.__dataclass_fields__.values()}
    defaults = flatten(to_dict(load_config(CLUSTER_SPECS["1 GPU"])))
    for line in doc.splitlines():
        for key in re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", line):
            if key.split(".")[0] in sections and key not in defaults:
                assert "planned" in line.lower(), f"docs/deploy.md names {key!r}, which config.py lacks: {line}"


def test_doc_submit_command(doc: str) -> None:
    block = _submit_block(doc)
    assert "ray job submit" in block and "--working-dir ." in block
    assert "-- python -m rlplat train configs/cluster_1gpu.yaml" in block
    assert set(_runtime_env(block)) <= {"env_vars", "excludes"}
    argv = shlex.split(block.replace("\\\n", " ").split(" -- ", 1)[1])
    load_config(ROOT / argv[4], [a for a in argv[5:] if "=" in a])


def test_job_env_vars_do_not_collide_with_the_drivers(doc: str, rayjob: dict, monkeypatch) -> None:
    """Ray refuses a job whose runtime env sets a variable the driver's ray.init runtime env also sets."""
    from rlplat.driver import workers

    seen: dict[str, Any] = {}
    monkeypatch.setattr(workers.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(workers.ray, "init", lambda *a, **kw: seen.update(kw))
    monkeypatch.setattr("ray.experimental.internal_kv._internal_kv_put", lambda *a, **kw: None)  # no Ray to mark
    monkeypatch.setattr(workers, "_private_token_file", lambda: None)
    workers.init_ray(load_config(CLUSTER_SPECS["1 GPU"]))
    driver_vars = set(seen["runtime_env"]["env_vars"])
    job_vars = set(_runtime_env(_submit_block(doc))["env_vars"])
    rayjob_env = yaml.safe_load(rayjob["spec"].get("runtimeEnvYAML") or "{}") or {}
    job_vars |= set(rayjob_env.get("env_vars", {}))
    assert not driver_vars & job_vars
    for name in driver_vars:
        assert name in doc, f"docs/deploy.md should warn that jobs must not set {name}"


def test_doc_says_what_is_planned(doc: str) -> None:
    section = doc.split("## What is implemented today, and what is planned", 1)[1].split("\n## ", 1)[0]
    implemented, planned = section.split("Planned (issue 9), not implemented", 1)
    for phrase in ("placement group", "--dry-run", "NCCL", "CUDA IPC", "rlplat eval SPEC --checkpoint DIR",
                   "placement.reward_actor"):
        assert phrase in implemented
    for phrase in ("FSDP2", "Tensor-parallel", "sleep mode"):
        assert phrase in planned


def test_doc_dry_run_plans_are_what_the_cli_prints(doc: str, capsys) -> None:
    from rlplat.cli import main

    section = doc.split("## GPU layouts", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    for command in [line for line in block.splitlines() if line.startswith("$ python -m rlplat")]:
        argv = shlex.split(command)[4:]
        assert main(argv) == 0
        printed = capsys.readouterr().out
        shown = block.split(command, 1)[1].split("\n$ ", 1)[0]
        for line in shown.strip().splitlines():
            if line.strip() != "...":
                assert line in printed.splitlines(), (command, line)
