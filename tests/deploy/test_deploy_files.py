"""deploy/: what can be checked without a container runtime or a cluster. YAML parses; the compose
file passes the Compose specification's schema; Kubernetes manifests and every pod fragment we
hand to Kubernetes (GPU steps, run pods) pass the Kubernetes schemas; the image installs with the
README's set-up script; the UI is published on loopback only; no secret is committed.

The Kubernetes path's hardening, checked on every pod the repository ships or launches (the
manifests under deploy/k8s, the chart's pods as its templates render them from the Helm values,
and the run and step pods built by dagster-k8s's own code from those values): unprivileged
(non-root, no privilege escalation, no capabilities, seccomp RuntimeDefault, read-only root
filesystem with emptyDir volumes where the code writes), only the auth proxy reaching the
webserver (NetworkPolicy), fixed image tags, and a vLLM API key that is required and sent.
All static: no cluster and no container runtime here (no `helm template`, nothing started)."""

import http.server
import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import kubernetes_validate
import pytest
import yaml

from prox_assets.servers import code_location_args, code_server_command
from prox_resources.device import DEFAULT_GPU_K8S_CONFIG, gpu_op_tags
from prox_resources.settings import REPO_ROOT
from tests.support.paths import BIN

DEPLOY = REPO_ROOT / "deploy"
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
    container = {
        "name": "step",
        "image": "prox-platform:test",
        **{camel(k): v for k, v in container_config.items()},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-step"},
        "spec": {**spec, "containers": [container]},
    }


def test_every_yaml_file_parses():
    files = [*DEPLOY.rglob("*.yaml"), REPO_ROOT / "dagster.yaml", REPO_ROOT / "workspace.yaml"]
    assert len(files) >= 7
    for path in files:
        assert _docs(path), path


def test_compose_file_passes_the_compose_spec_and_wires_the_services():
    result = subprocess.run(
        [
            BIN / "check-jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            DEPLOY / "compose.yaml",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compose = _docs(DEPLOY / "compose.yaml")[0]
    services = compose["services"]
    assert {"postgres", "s3", "code", "webserver", "daemon", "proxy", "vllm"} <= set(services)
    workspace = _docs(DEPLOY / "workspace.yaml")[0]["load_from"][0]["grpc_server"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert (
        workspace["host"] == "code" and f'"-p", "{workspace["port"]}"' in dockerfile
    )  # the image's CMD
    # only the authenticating proxy is published, on loopback and nothing else: it is plain HTTP
    # (no TLS in front of basic auth), and the files say so
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"proxy": ["127.0.0.1:8080:8080"]}
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    assert "basic_auth" in caddyfile and "tls" not in caddyfile.replace("TLS", "")  # no TLS here...
    assert (
        "127.0.0.1" in caddyfile and "LOOPBACK ONLY" in (DEPLOY / "compose.yaml").read_text()
    )  # ...said plainly
    assert "loopback only" in (DEPLOY / "README.md").read_text()
    assert not any(
        "PROX_UI_BIND" in (DEPLOY / f).read_text() for f in ("compose.yaml", "README.md")
    )
    assert services["vllm"]["profiles"] == ["gpu"]
    # the services on the platform image drop every capability and cannot gain privileges
    for name in ("code", "webserver", "daemon"):
        assert services[name]["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in services[name]["security_opt"], name


@pytest.mark.parametrize("name", ["vllm.yaml", "auth-proxy.yaml"])
def test_kubernetes_manifests_pass_the_kubernetes_schemas(name):
    docs = _docs(DEPLOY / "k8s" / name)
    for doc in docs:
        _validate(doc)
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        _validate({**docs[0], "spec": {**docs[0]["spec"], "replicas": "two"}})


def test_gpu_steps_ask_kubernetes_for_a_gpu_on_a_gpu_node(monkeypatch):
    values = _docs(DEPLOY / "helm" / "values.yaml")[0]
    env = {
        e["name"]: e.get("value")
        for e in values["dagster-user-deployments"]["deployments"][0]["env"]
    }
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
    assert deployment["dagsterApiGrpcArgs"] == code_location_args()
    assert {"name": "PROX_EXECUTOR", "value": "k8s"} in deployment["env"]
    assert (
        values["postgresql"]["enabled"] is False
        and "postgresqlPassword" not in values["postgresql"]
    )
    assert (
        values["global"]["postgresqlSecretName"]
        and values["dagsterWebserver"]["service"]["type"] == "ClusterIP"
    )
    code = (
        "import prox_assets.definitions as d; "
        "print(d.defs.resolve_implicit_global_asset_job_def().executor_def.name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**_env(), "PROX_EXECUTOR": "k8s"},
        cwd=REPO_ROOT,
    )
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
    assert "cp deploy/dagster.yaml" in dockerfile
    # the image serves the code location with the command line the tests and the bench start
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd and json.loads(cmd[1]) == code_server_command(4000, "0.0.0.0", "dagster")
    assert re.search(r"^USER (?!root)", dockerfile, re.M)  # not root at run time
    # numeric, so that Kubernetes' runAsNonRoot can verify it, and the uid the pods run as
    uid, gid = _image_user()
    assert uid != 0 and gid != 0
    assert (
        _values()["dagster-user-deployments"]["deployments"][0]["podSecurityContext"]["runAsUser"]
        == uid
    )


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
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout.split()
    patterns = [
        re.compile(r"AKIA[0-9A-Z]{16}"),
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        re.compile(r"(?i)(password|secret)\s*[:=]\s*['\"][^'\"${}]{8,}['\"]"),
    ]
    for name in tracked:
        path = REPO_ROOT / name
        if (
            path.suffix in {".png", ".gz", ".parquet"}
            or not path.is_file()
            or name.startswith("tests/")
        ):
            continue
        text = path.read_text(errors="replace")
        for pattern in patterns:
            assert not pattern.search(text), f"{name}: {pattern.pattern}"
    for path in [*DEPLOY.rglob("*.yaml"), REPO_ROOT / "dagster.yaml"]:
        for doc in _docs(path):
            assert not list(_secret_literals(doc)), path
    assert list(_secret_literals({"db": {"password": "hunter2hunter2"}})) == [
        ".db.password"
    ]  # it can fail


def test_the_ui_binds_to_loopback_by_default():
    from click.testing import CliRunner

    from prox_assets.cli import main

    help_text = CliRunner().invoke(main, ["ui", "--help"]).output
    assert "127.0.0.1" in help_text


# --- the Kubernetes path's hardening -------------------------------------------------------------
RELEASE = "prox"  # the Helm release name of deploy/README.md
# the labels the chart gives its webserver pods (dagster.selectorLabels + component)
WEBSERVER_LABELS = {
    "app.kubernetes.io/name": "dagster",
    "app.kubernetes.io/instance": RELEASE,
    "component": "dagster-webserver",
}
# ...and the code server pods of its dagster-user-deployments subchart
CODE_SERVER_LABELS = {
    "app.kubernetes.io/name": "dagster-user-deployments",
    "app.kubernetes.io/instance": RELEASE,
    "component": "user-deployments",
    "deployment": "prox",
}
DAGSTER_HOME = "/opt/dagster/dagster_home"  # the chart's global.dagsterHome


def _values() -> dict:
    return _docs(DEPLOY / "helm" / "values.yaml")[0]


def _image_user() -> tuple[int, int]:
    match = re.search(r"^USER (\d+):(\d+)\s*$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert match, "the Dockerfile's USER is uid:gid, numeric"
    return int(match[1]), int(match[2])


def _image_env(name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", (DEPLOY / "Dockerfile").read_text())
    assert match, name
    return match[1]


def _manifest_pods() -> dict[str, dict]:
    """name -> pod spec of every workload under deploy/k8s."""
    pods = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in _docs(path):
            if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
                pods[f"k8s/{path.name}:{doc['metadata']['name']}"] = doc["spec"]["template"]
    return pods


def _chart_pods() -> dict[str, dict]:
    """The chart's webserver, daemon and code-server pods, rendered from the values as the chart's
    templates render them (securityContext, init containers, instance mount, extra volumes)."""
    values = _values()
    image = lambda i: f"{i['repository']}:{i['tag']}"  # noqa: E731
    pg_ready = {
        "name": "check-db-ready",
        "image": image(values["postgresql"]["image"]),
        "command": ["sh", "-c", "until pg_isready -h db -p 5432 -U dagster; do sleep 2; done"],
    }
    pods = {}
    for key, component in (
        ("dagsterWebserver", "dagster-webserver"),
        ("dagsterDaemon", "dagster-daemon"),
    ):
        section = values[key]
        init = [{**pg_ready, "securityContext": section["securityContext"]}]
        if key == "dagsterWebserver":
            init.append(
                {
                    "name": "init-user-deployment-prox",
                    "image": image(values["busybox"]["image"]),
                    "command": ["sh", "-c", "until nslookup prox; do sleep 2; done"],
                    "securityContext": section["securityContext"],
                }
            )
        container = {
            "name": "dagster",
            "image": image(section["image"]),
            "securityContext": section["securityContext"],
            "volumeMounts": [
                {
                    "name": "dagster-instance",
                    "mountPath": f"{DAGSTER_HOME}/dagster.yaml",
                    "subPath": "dagster.yaml",
                },
                *section.get("volumeMounts", []),
            ],
        }
        if key == "dagsterWebserver":
            port = section["service"]["port"]
            container.update(
                ports=[{"name": "http", "containerPort": port, "protocol": "TCP"}],
                command=["/bin/bash", "-c", f"dagster-webserver -h 0.0.0.0 -p {port}"],
                readinessProbe=section["readinessProbe"],
                livenessProbe=section["livenessProbe"],
                startupProbe={k: v for k, v in section["startupProbe"].items() if k != "enabled"},
            )
        pods[f"helm:{key}"] = {
            "metadata": {"labels": {**WEBSERVER_LABELS, "component": component}},
            "spec": {
                "securityContext": section["podSecurityContext"],
                "initContainers": init,
                "containers": [container],
                "volumes": [
                    {
                        "name": "dagster-instance",
                        "configMap": {"name": f"{RELEASE}-dagster-instance"},
                    },
                    *section.get("volumes", []),
                ],
            },
        }
    deployment = values["dagster-user-deployments"]["deployments"][0]
    pods["helm:dagster-user-deployments"] = {
        "metadata": {"labels": CODE_SERVER_LABELS},
        "spec": {
            "securityContext": deployment["podSecurityContext"],
            "volumes": deployment["volumes"],
            "containers": [
                {
                    "name": "dagster-user-deployments",
                    "image": image(deployment["image"]),
                    "args": [
                        "dagster",
                        "api",
                        "grpc",
                        "-h",
                        "0.0.0.0",
                        "-p",
                        str(deployment["port"]),
                        *deployment["dagsterApiGrpcArgs"],
                    ],
                    "securityContext": deployment["securityContext"],
                    "volumeMounts": deployment["volumeMounts"],
                    "resources": deployment["resources"],
                }
            ],
        },
    }
    return pods


def _launched_jobs() -> dict[str, dict]:
    """The Jobs of a run pod and of a CPU and a GPU step pod, built by dagster-k8s's own code
    (K8sContainerContext, construct_dagster_k8s_job) from what the chart hands it: the
    k8sRunLauncher config of the values, the code location's container context
    (includeConfigInLaunchedRuns, as the subchart writes it), the GPU steps' op tag."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
    from kubernetes.client import ApiClient

    values = _values()
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    snake = {
        "containerConfig": "container_config",
        "podSpecConfig": "pod_spec_config",
        "podTemplateSpecMetadata": "pod_template_spec_metadata",
        "jobSpecConfig": "job_spec_config",
        "jobMetadata": "job_metadata",
    }
    launcher_context = K8sContainerContext(
        env_secrets=[s["name"] for s in launcher.get("envSecrets", [])],
        volumes=launcher.get("volumes"),
        volume_mounts=launcher.get("volumeMounts"),
        security_context=launcher.get("securityContext"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
            {snake[k]: v for k, v in launcher.get("runK8sConfig", {}).items()}
        ),
    )
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    code_context = K8sContainerContext.create_from_config(
        {
            "k8s": {
                "image_pull_policy": deployment["image"]["pullPolicy"],
                "env_config_maps": [
                    f"{RELEASE}-dagster-user-deployments-{deployment['name']}-user-env"
                ],
                "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
                "volume_mounts": deployment.get("volumeMounts", []),
                "volumes": deployment.get("volumes", []),
                "resources": deployment.get("resources", {}),
                "namespace": RELEASE,
                "env": deployment["env"],
                "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
            }
        }
    )
    run_context = launcher_context.merge(code_context)
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    # a step pod: the run's context, then its op's dagster-k8s/config tag (the CPU or the GPU one)
    gpu_tag = UserDefinedDagsterK8sConfig.from_dict(json.loads(env["PROX_GPU_K8S_CONFIG"]))
    cpu_tag = UserDefinedDagsterK8sConfig.from_dict(json.loads(env["PROX_CPU_K8S_CONFIG"]))
    contexts = {
        "run": (run_context, "run_worker"),
        "cpu-step": (run_context.merge(K8sContainerContext(run_k8s_config=cpu_tag)), "step_worker"),
        "gpu-step": (run_context.merge(K8sContainerContext(run_k8s_config=gpu_tag)), "step_worker"),
    }
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    chart = SimpleNamespace(
        job_image=None,
        dagster_home=DAGSTER_HOME,
        instance_config_map=f"{RELEASE}-dagster-instance",
        postgres_password_secret=values["global"]["postgresqlSecretName"],
    )
    jobs = {}
    for name, (context, component) in contexts.items():
        job = construct_dagster_k8s_job(
            context.get_k8s_job_config(image, chart),
            ["dagster", "api", "execute_run"],
            f"dagster-{name}-0123456789",
            user_defined_k8s_config=context.run_k8s_config,
            component=component,
        )
        jobs[f"launched:{name}"] = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            **ApiClient().sanitize_for_serialization(job),
        }
    return jobs


def test_run_and_step_pods_get_their_own_resources(monkeypatch):
    """The chart hands the code server's resources to every launched pod (includeConfigInLaunchedRuns
    overrides runK8sConfig): a run pod, which only orchestrates, gets them; every step pod gets its
    own from its op's tag, CPU steps PROX_CPU_K8S_CONFIG's and GPU steps PROX_GPU_K8S_CONFIG's."""
    from prox_assets.definitions import ASSETS
    from prox_resources.device import DEFAULT_CPU_K8S_CONFIG, cpu_op_tags

    values = _values()
    deployment = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    resources = {
        k: j["spec"]["template"]["spec"]["containers"][0]["resources"]
        for k, j in _launched_jobs().items()
    }
    assert resources["launched:run"] == deployment["resources"]
    assert (
        resources["launched:cpu-step"]
        == json.loads(env["PROX_CPU_K8S_CONFIG"])["container_config"]["resources"]
    )
    assert (
        resources["launched:gpu-step"]
        == json.loads(env["PROX_GPU_K8S_CONFIG"])["container_config"]["resources"]
    )
    assert resources["launched:cpu-step"] != deployment["resources"]
    assert (
        "resources"
        not in values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]
    )
    _validate(_pod(DEFAULT_CPU_K8S_CONFIG["container_config"]))
    monkeypatch.setenv("PROX_CPU_K8S_CONFIG", env["PROX_CPU_K8S_CONFIG"])
    assert cpu_op_tags()["dagster-k8s/config"] == json.loads(env["PROX_CPU_K8S_CONFIG"])
    untagged = [a.key.to_user_string() for a in ASSETS if "dagster-k8s/config" not in a.op.tags]
    assert not untagged, f"steps that would run on the code server's resources: {untagged}"


def _all_pods() -> dict[str, dict]:
    return {
        **_manifest_pods(),
        **_chart_pods(),
        **{k: j["spec"]["template"] for k, j in _launched_jobs().items()},
    }


def _hardening_problems(name: str, template: dict) -> list[str]:
    """What makes this pod template privileged or its root filesystem writable."""
    spec = template["spec"]
    pod = spec.get("securityContext") or {}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    problems = [f"{name}: {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        where = f"{name}/{container['name']}"
        sc = container.get("securityContext") or {}
        if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if (
            sc.get("runAsUser", pod.get("runAsUser")) == 0
            or sc.get("runAsGroup", pod.get("runAsGroup")) == 0
        ):
            problems.append(f"{where}: runs as uid or gid 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
            problems.append(f"{where}: capabilities not dropped (ALL)")
        if (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get(
            "type"
        ) != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem writable")
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        tmp = mounts.get("/tmp")
        if container in spec["containers"] and not (
            tmp and "emptyDir" in volumes.get(tmp["name"], {}) and not tmp.get("readOnly")
        ):
            problems.append(f"{where}: no writable emptyDir at /tmp")
    return problems


def test_every_pod_runs_unprivileged_on_a_read_only_root():
    pods = _all_pods()
    assert {
        "launched:run",
        "launched:gpu-step",
        "helm:dagsterWebserver",
        "helm:dagsterDaemon",
        "helm:dagster-user-deployments",
        "k8s/vllm.yaml:vllm",
        "k8s/auth-proxy.yaml:auth-proxy",
    } <= set(pods)
    problems = [p for name, template in pods.items() for p in _hardening_problems(name, template)]
    assert not problems, "\n".join(problems)
    # the check can fail
    bare = {"spec": {"containers": [{"name": "c", "image": "x:1.0"}]}}
    assert len(_hardening_problems("bare", bare)) == 6
    # the platform image's pods write $PROX_HOME and DuckDB's spill folder, both emptyDir, as
    # the image's own user; the chart's pods and the launched pods pass the Kubernetes schemas
    uid, _ = _image_user()
    for name, template in pods.items():
        spec = template["spec"]
        if name.startswith("k8s/"):
            continue
        _validate(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", **template.get("metadata", {})},
                "spec": spec,
            }
        )
        if "prox-platform" not in spec["containers"][0]["image"]:
            continue
        assert spec["securityContext"]["runAsUser"] == uid, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
        for path in (_image_env("PROX_HOME"), "/opt/prox/.tmp"):
            assert path in mounts and "emptyDir" in volumes[mounts[path]["name"]], (name, path)
    for job in _launched_jobs().values():
        _validate(job)
    gpu = _launched_jobs()["launched:gpu-step"]["spec"]["template"]["spec"]
    assert (
        gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" and gpu["nodeSelector"]
    )


def _image_refs() -> dict[str, str]:
    """where -> image reference, for every image the deploy files name."""
    refs = {}
    compose = _docs(DEPLOY / "compose.yaml")[0]
    for name, service in compose["services"].items():
        # ${VAR:-default}: the default is what runs unless the user sets VAR
        refs[f"compose:{name}"] = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", service["image"])
    for name, template in {**_manifest_pods(), **_chart_pods()}.items():
        for c in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]:
            refs[f"{name}/{c['name']}"] = c["image"]

    def walk(node, path):
        if isinstance(node, dict):
            if "repository" in node:
                refs[f"values:{path}"] = f"{node['repository']}:{node.get('tag') or ''}".rstrip(":")
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(_values(), "")
    for i, line in enumerate(re.findall(r"^FROM (\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)):
        refs[f"Dockerfile:FROM[{i}]"] = line
    return refs


def _unpinned(ref: str) -> bool:
    """No tag, `latest`, or a moving major-only tag (`caddy:2`); digests are pinned."""
    if "@sha256:" in ref:
        return False
    name, _, tag = ref.rpartition(":")
    return not name or "/" in tag or not re.match(r"v?\d+\.\d+", tag)


def test_no_image_is_latest_or_untagged():
    refs = _image_refs()
    assert len(refs) >= 12
    assert not {where: ref for where, ref in refs.items() if _unpinned(ref)}
    assert [
        _unpinned(r)
        for r in ("caddy:2", "x/y:latest", "x/y", "localhost:5000/y", "y:1.2", "y@sha256:ab")
    ] == [True, True, True, True, False, False]
    for path in [*DEPLOY.rglob("*"), REPO_ROOT / "README.md"]:
        if path.is_file() and path.suffix in {"", ".yaml", ".md", ".example"}:
            assert ":latest" not in path.read_text(), path
    # the chart's own images are pinned explicitly, to the dagster release the project pins
    import dagster

    values = _values()
    for key in ("dagsterWebserver", "dagsterDaemon"):
        assert str(values[key]["image"]["tag"]) == dagster.__version__, key
    assert f"--version {dagster.__version__}" in (DEPLOY / "README.md").read_text()
    # where users put their own image: the Helm values' user deployment, compose's PROX_IMAGE
    assert "${PROX_IMAGE:-" in _docs(DEPLOY / "compose.yaml")[0]["x-dagster"]["image"]
    assert (
        "dagster-user-deployments.deployments[0].image"
        in (DEPLOY / "helm" / "values.yaml").read_text()
    )


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        value, op = labels.get(e["key"]), e["operator"]
        if (
            (op == "In" and value not in e["values"])
            or (op == "NotIn" and value in e.get("values", []))
            or (op == "Exists" and e["key"] not in labels)
            or (op == "DoesNotExist" and e["key"] in labels)
        ):
            return False
    return True


def _admitted(
    policies: list[dict], to_labels: dict, from_labels: dict, port: int, same_namespace: bool = True
) -> bool:
    """Whether NetworkPolicy semantics let a pod with ``from_labels`` connect to a pod with
    ``to_labels`` on ``port`` (same namespace unless told otherwise)."""
    applying = [
        p
        for p in policies
        if _selects(p["spec"]["podSelector"], to_labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not applying:
        return True  # a pod no policy selects is not isolated

    def peer_admits(peer):
        if "ipBlock" in peer or "namespaceSelector" in peer:
            return True  # other namespaces or addresses: treated as admitting anything
        return same_namespace and _selects(peer["podSelector"], from_labels)

    for policy in applying:
        for rule in policy["spec"].get("ingress", []):
            if (not rule.get("from") or any(peer_admits(p) for p in rule["from"])) and (
                not rule.get("ports") or any(p.get("port") in (port, None) for p in rule["ports"])
            ):
                return True
    return False


def _policies() -> list[dict]:
    return [
        d
        for path in (DEPLOY / "k8s").glob("*.yaml")
        for d in _docs(path)
        if d["kind"] == "NetworkPolicy"
    ]


def test_only_the_auth_proxy_reaches_the_webserver():
    policies, pods, values = _policies(), _all_pods(), _values()
    port = values["dagsterWebserver"]["service"]["port"]
    proxy = pods["k8s/auth-proxy.yaml:auth-proxy"]
    assert _admitted(policies, WEBSERVER_LABELS, proxy["metadata"]["labels"], port)
    others = {
        name: t["metadata"]["labels"]
        for name, t in pods.items()
        if name != "k8s/auth-proxy.yaml:auth-proxy"
    }
    assert len(others) >= 6
    for name, labels in {**others, "unlabelled": {}}.items():
        assert not _admitted(policies, WEBSERVER_LABELS, labels, port), name
    assert not _admitted(
        policies, WEBSERVER_LABELS, proxy["metadata"]["labels"], port, same_namespace=False
    )
    assert not _admitted(policies, WEBSERVER_LABELS, proxy["metadata"]["labels"], port + 1)
    assert _admitted([], WEBSERVER_LABELS, {}, port)  # the check can fail: no policy, no isolation
    # the proxy's upstream is the chart's webserver Service on that port; the webserver pods of
    # the chart carry the labels the policy selects
    upstream = next(
        a for a in proxy["spec"]["containers"][0]["args"] if a.startswith("--upstream=")
    )
    assert (
        upstream
        == f"--upstream=http://{RELEASE}-dagster-webserver.{RELEASE}.svc.cluster.local:{port}"
    )
    assert _chart_pods()["helm:dagsterWebserver"]["metadata"]["labels"] == WEBSERVER_LABELS
    assert port >= 1024  # a non-root webserver cannot bind below 1024
    # and the model server admits Dagster's pods (run and step pods included) and nothing else
    assert all(
        _admitted(
            policies, {"app.kubernetes.io/name": "vllm"}, pods[name]["metadata"]["labels"], 8000
        )
        for name in (
            "launched:run",
            "launched:cpu-step",
            "launched:gpu-step",
            "helm:dagster-user-deployments",
        )
    )
    assert not _admitted(
        policies, {"app.kubernetes.io/name": "vllm"}, proxy["metadata"]["labels"], 8000
    )


def _vllm_guard(script: str, key: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the model server's start command with a stand-in `vllm` that prints its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "vllm").write_text('#!/bin/sh\necho "vllm $*"\n')
    (bin_dir / "vllm").chmod(0o755)
    return subprocess.run(
        ["/bin/sh", "-c", script, "vllm-serve", "/models/m", "--port", "8000"],
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "VLLM_API_KEY": key},
    )


class _OpenAIStub(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list] = []  # shared by the handler instances

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        _OpenAIStub.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"choices": [{"message": {"content": "ok"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_vllm_api_key_is_required_and_sent(tmp_path, monkeypatch):
    # Kubernetes: the key comes from the Secret, and the server will not start with an empty one
    vllm = next(d for d in _docs(DEPLOY / "k8s" / "vllm.yaml") if d["kind"] == "Deployment")
    container = vllm["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    ref = env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "prox-openai", "key": "OPENAI_API_KEY"}  # not optional
    assert container["command"][:2] == ["/bin/sh", "-c"]
    refused = _vllm_guard(container["command"][2], "", tmp_path)
    assert refused.returncode == 64 and "VLLM_API_KEY is empty" in refused.stderr
    served = _vllm_guard(container["command"][2], "k-123", tmp_path)
    assert served.returncode == 0 and served.stdout.strip() == "vllm serve /models/m --port 8000"
    assert (
        f"create secret generic prox-openai --from-literal={ref['key']}="
        in (DEPLOY / "README.md").read_text()
    )
    # ...and every pod that calls it gets that Secret as OPENAI_API_KEY
    values = _values()
    assert {"name": "prox-openai"} in values["dagster-user-deployments"]["deployments"][0][
        "envSecrets"
    ]
    for name, job in _launched_jobs().items():
        env_from = job["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"secretRef": {"name": "prox-openai"}} in env_from, name
    # compose: the same variable for the server (required at its start) and the code service
    services = _docs(DEPLOY / "compose.yaml")[0]["services"]
    assert services["vllm"]["environment"]["VLLM_API_KEY"] == "${OPENAI_API_KEY:-}"
    assert services["code"]["environment"]["OPENAI_API_KEY"] == "${OPENAI_API_KEY:-}"
    script = services["vllm"]["entrypoint"][2].replace("$$", "$")  # compose's escape of $
    assert _vllm_guard(script, "", tmp_path).returncode == 64
    assert _vllm_guard(script, "k-123", tmp_path).stdout.startswith("vllm serve /models/m")
    # the engine's openai backend sends the key from the environment as a bearer token
    from prox_assets.definitions import build_resources
    from prox_resources.engine import ModelEngine

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "k-123")
        monkeypatch.setenv("PROX_ENGINE_BACKEND", "openai")
        base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        backend = ModelEngine(backend="openai", base_url=base_url, model="m").load()
        assert backend.generate([[{"role": "user", "content": "hi"}]], 1) == ["ok"]
        assert _OpenAIStub.seen[-1] == "Bearer k-123"
        assert (
            build_resources()["engine"].api_key == "OPENAI_API_KEY"
        )  # an EnvVar: resolved in the run
    finally:
        server.shutdown()
