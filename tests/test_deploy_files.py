"""deploy/: what can be checked without a container runtime or a cluster. YAML parses; the compose
file passes the Compose specification's schema; Kubernetes manifests and every pod fragment we
hand to Kubernetes (GPU steps, run pods) pass the Kubernetes schemas; the image installs with the
README's set-up script; the UI is published on loopback only; no secret is committed."""

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from prox_resources.device import DEFAULT_GPU_K8S_CONFIG, gpu_op_tags
from prox_resources.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.32"
SECRET_KEY = re.compile(r"(?i)(password|secret|token|access_key|api_key|password_hash)$")


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _validate(resource: dict) -> None:
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def _pod(container_config: dict, pod_spec_config: dict | None = None) -> dict:
    """A Pod built from dagster-k8s's snake_case config, in Kubernetes' camelCase."""
    camel = lambda s: re.sub(r"_(\w)", lambda m: m.group(1).upper(), s)  # noqa: E731
    spec = {camel(k): v for k, v in (pod_spec_config or {}).items()}
    container = {"name": "step", "image": "prox-platform:test", **{camel(k): v for k, v in container_config.items()}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gpu-step"}, "spec": {**spec, "containers": [container]}}


def test_every_yaml_file_parses():
    files = [*DEPLOY.rglob("*.yaml"), REPO_ROOT / "dagster.yaml", REPO_ROOT / "workspace.yaml"]
    assert len(files) >= 7
    for path in files:
        assert _docs(path), path


def test_compose_file_passes_the_compose_spec_and_wires_the_services():
    result = subprocess.run([BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec",
                             DEPLOY / "compose.yaml"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    compose = _docs(DEPLOY / "compose.yaml")[0]
    services = compose["services"]
    assert {"postgres", "s3", "code", "webserver", "daemon", "proxy", "vllm"} <= set(services)
    workspace = _docs(DEPLOY / "workspace.yaml")[0]["load_from"][0]["grpc_server"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert workspace["host"] == "code" and f'"-p", "{workspace["port"]}"' in dockerfile  # the image's CMD
    # only the authenticating proxy is published, and on loopback unless told otherwise
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert list(published) == ["proxy"] and published["proxy"][0].startswith("${PROX_UI_BIND:-127.0.0.1}:")
    assert "basic_auth" in (DEPLOY / "Caddyfile").read_text()
    assert services["vllm"]["profiles"] == ["gpu"]


@pytest.mark.parametrize("name", ["vllm.yaml", "auth-proxy.yaml"])
def test_kubernetes_manifests_pass_the_kubernetes_schemas(name):
    docs = _docs(DEPLOY / "k8s" / name)
    for doc in docs:
        _validate(doc)
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        _validate({**docs[0], "spec": {**docs[0]["spec"], "replicas": "two"}})


def test_gpu_steps_ask_kubernetes_for_a_gpu_on_a_gpu_node(monkeypatch):
    values = _docs(DEPLOY / "helm" / "values.yaml")[0]
    env = {e["name"]: e.get("value") for e in values["dagster-user-deployments"]["deployments"][0]["env"]}
    for config in (DEFAULT_GPU_K8S_CONFIG, json.loads(env["PROX_GPU_K8S_CONFIG"])):
        pod = _pod(config["container_config"], config["pod_spec_config"])
        _validate(pod)
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["spec"]["nodeSelector"]
    monkeypatch.setenv("PROX_GPU_K8S_CONFIG", env["PROX_GPU_K8S_CONFIG"])
    assert gpu_op_tags()["dagster-k8s/config"] == json.loads(env["PROX_GPU_K8S_CONFIG"])
    run_pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]
    _validate(_pod(run_pod))


def test_helm_values_use_the_kubernetes_launcher_and_executor():
    values = _docs(DEPLOY / "helm" / "values.yaml")[0]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert "prox_assets.definitions" in deployment["dagsterApiGrpcArgs"]
    assert {"name": "PROX_EXECUTOR", "value": "k8s"} in deployment["env"]
    assert values["postgresql"]["enabled"] is False and "postgresqlPassword" not in values["postgresql"]
    assert values["global"]["postgresqlSecretName"] and values["dagsterWebserver"]["service"]["type"] == "ClusterIP"
    code = ("import prox_assets.definitions as d; "
            "print(d.defs.resolve_implicit_global_asset_job_def().executor_def.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**_env(), "PROX_EXECUTOR": "k8s"}, cwd=REPO_ROOT)
    assert out.stdout.strip().endswith("k8s"), out.stderr[-2000:]


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PROX_EXECUTOR")}


def test_the_image_installs_with_the_readme_setup():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    assert "bash deploy/setup.sh" in readme and "bash deploy/setup.sh --deploy" in dockerfile
    for part in ("pyproject.toml", "prox_assets", "prox_resources", "deploy"):
        assert re.search(rf"^COPY {part}\b", dockerfile, re.M), part
    assert "cp deploy/dagster.yaml" in dockerfile and "prox_assets.definitions" in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.M)  # not root at run time


def _secret_literals(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str) and SECRET_KEY.search(str(k)) and v and not v.startswith("${"):
                yield f"{path}.{k}"
            yield from _secret_literals(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _secret_literals(v, f"{path}[{i}]")


def test_no_secret_is_committed():
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO_ROOT).stdout.split()
    patterns = [re.compile(r"AKIA[0-9A-Z]{16}"), re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
                re.compile(r"(?i)(password|secret)\s*[:=]\s*['\"][^'\"${}]{8,}['\"]")]
    for name in tracked:
        path = REPO_ROOT / name
        if path.suffix in {".png", ".gz", ".parquet"} or not path.is_file() or name.startswith("tests/"):
            continue
        text = path.read_text(errors="replace")
        for pattern in patterns:
            assert not pattern.search(text), f"{name}: {pattern.pattern}"
    for path in [*DEPLOY.rglob("*.yaml"), REPO_ROOT / "dagster.yaml"]:
        for doc in _docs(path):
            assert not list(_secret_literals(doc)), path
    assert list(_secret_literals({"db": {"password": "hunter2hunter2"}})) == [".db.password"]  # it can fail


def test_the_ui_binds_to_loopback_by_default():
    from click.testing import CliRunner

    from prox_assets.cli import main

    help_text = CliRunner().invoke(main, ["ui", "--help"]).output
    assert "127.0.0.1" in help_text
