"""What can be checked of deploy/ without docker, systemd or a cluster: every file parses, and
ports, probes, paths, users and timeouts agree with each other and with the daemon's settings."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tesserad.api.health import LIVENESS_SERVICE
from tesserad.cli import EXIT_BAD_SETTINGS, EXIT_STORE_TOO_NEW
from tesserad.config import CLIENT_ENV_NAMES, Address, Settings, load_settings, parse_size

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
DATA_DIR = "/var/lib/tesserad"
GRPC_PORT = 50051
METRICS_PORT = 9464
HTTP_PORT = 8080
# The Open Inference Protocol over HTTP (serving.oip_http_listen), on Triton's port.
OIP_HTTP_PORT = 8000
READY_PATH = "/v2/health/ready"
LIVE_PROBE = {"service": LIVENESS_SERVICE}


def settings_from_toml(text: str, tmp_path: Path) -> Settings:
    path = tmp_path / "tesserad.toml"
    path.write_text(text)
    return load_settings(path, env={})


def env_settings(env: dict[str, str]) -> Settings:
    return load_settings(env={k: v for k, v in env.items() if k.startswith("TESSERA_")})


def dockerfile_env(text: str) -> dict[str, str]:
    block = re.search(r"^ENV (.+?)(?=^\S)", text, re.MULTILINE | re.DOTALL)
    assert block, "no ENV block"
    return dict(re.findall(r"(\w+)=(\S+)", block.group(1)))


def runtime_stage(name: str) -> str:
    return (DEPLOY / "docker" / name).read_text().rsplit("\nFROM ", 1)[1]


def image_config(runtime: str) -> tuple[str, Path]:
    """The settings file the image's `serve` reads (its CMD's --config) and the repository file
    a COPY puts there."""
    cmd = re.search(r"^CMD (\[.*\])$", runtime, re.MULTILINE)
    assert cmd, "no CMD"
    words = json.loads(cmd.group(1))
    assert words[0] == "serve" and words[1] == "--config"
    copied = dict((dest, src) for src, dest in re.findall(r"^COPY (\S+) (\S+)$", runtime, re.MULTILINE))
    return words[2], DEPLOY.parent / copied[words[2]]


def pod_settings(name: str, container: dict, config_maps: dict[str, str], tmp_path: Path) -> Settings:
    """What a container of the image `name` runs with, as a pod starts it: the image's ENV and the
    container's env as the environment, and the file at the --config path its args name, which
    is the ConfigMap's when one is mounted there, else the image's own."""
    runtime = runtime_stage(name)
    image_path, image_file = image_config(runtime)
    args = container.get("args", ["serve", "--config", image_path])
    config_path = args[args.index("--config") + 1]
    mounted = {m["mountPath"]: m for m in container["volumeMounts"]}
    if config_path in mounted:
        text = config_maps[mounted[config_path]["subPath"]]
    else:
        assert config_path == image_path
        text = image_file.read_text()
    path = tmp_path / "pod.toml"
    path.write_text(text)
    env = dockerfile_env(runtime) | {e["name"]: e.get("value", "") for e in container.get("env", [])}
    return load_settings(path, env={k: v for k, v in env.items() if k.startswith("TESSERA_")})


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_run_non_root_with_a_grpc_health_check(name, tmp_path):
    runtime = runtime_stage(name)
    assert re.search(r"^USER 10001:10001$", runtime, re.MULTILINE)
    assert f'VOLUME ["{DATA_DIR}"]' in runtime
    assert f"EXPOSE {GRPC_PORT} {METRICS_PORT} {HTTP_PORT} {OIP_HTTP_PORT}" in runtime
    # Settings live in a file the image ships, never in ENV: TESSERA_* ranks above a config file,
    # and a variable baked into the image would beat the ConfigMap mounted over that file.
    assert [k for k in dockerfile_env(runtime) if k.startswith("TESSERA_")] == []
    config_path, config_file = image_config(runtime)
    # The health check reads the file the daemon reads (its listener, its TLS).
    assert f'CMD ["python", "-m", "tesserad.tools.healthcheck", "--config", "{config_path}"]' in runtime
    settings = settings_from_toml(config_file.read_text(), tmp_path)
    assert settings.listen.port == GRPC_PORT and settings.metrics_listen.port == METRICS_PORT
    assert settings.http_listen is not None and settings.http_listen.port == HTTP_PORT
    assert settings.serving.oip_http_listen == Address("0.0.0.0", OIP_HTTP_PORT)
    assert str(settings.data_dir) == DATA_DIR
    # Listening on 0.0.0.0 needs authentication; the image turns tokens on.
    assert not settings.listen.is_loopback and settings.security.tokens_file is not None


@pytest.mark.parametrize(
    ("workload", "config_map", "image"),
    [
        ("StatefulSet/tesserad", "ConfigMap/tesserad-config", "Dockerfile.cuda"),
        ("Deployment/tesserad-replica", "ConfigMap/tesserad-replica-config", "Dockerfile"),
    ],
)
def test_a_k8s_pod_runs_with_its_configmaps_settings_not_the_images(workload, config_map, image, tmp_path):
    """The image's settings and the ConfigMap's together, as the pod loads them: what the
    ConfigMap says is what runs (a TESSERA_* ENV line in the image once beat its tokens_file, and
    the pod exited 1 for a tokens file where no Secret was mounted)."""
    objects = k8s_objects()
    container = objects[workload]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == {"Dockerfile": "tesserad:cpu", "Dockerfile.cuda": "tesserad:cuda"}[image]
    config_text = objects[config_map]["data"]["tesserad.toml"]
    running = pod_settings(image, container, objects[config_map]["data"], tmp_path)
    wanted = settings_from_toml(config_text, tmp_path)
    for name in ("listen", "metrics_listen", "http_listen", "data_dir", "log_format", "grace_period_s"):
        assert getattr(running, name) == getattr(wanted, name), name
    assert running.serving.oip_http_listen == wanted.serving.oip_http_listen
    assert running.security == wanted.security
    # The tokens file it reads is in the Secret's mount.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert running.security.tokens_file is not None and running.security.tokens_file.parent == Path(
        mounts["tokens"]
    )


def test_the_healthcheck_module_the_images_call_exists():
    from tesserad.tools import healthcheck

    assert callable(healthcheck.main)


def test_systemd_unit_is_hardened_and_waits_for_the_drain(tmp_path):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((DEPLOY / "systemd" / "tesserad.service").read_text())
    service = unit["Service"]
    assert service["User"] == service["Group"] == "tesserad"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["StateDirectory"] == "tesserad"
    assert service["ReadWritePaths"] == DATA_DIR
    assert service["Restart"] == "on-failure"
    # tesserad tells systemd READY=1 once it serves (tesserad.systemd).
    assert service["Type"] == "notify"
    # A wrong setting, or a store of a newer tesserad, is not restarted into a loop; a start that
    # failed otherwise (a secret not mounted yet) is retried.
    assert service["RestartPreventExitStatus"].split() == [str(EXIT_BAD_SETTINGS), str(EXIT_STORE_TOO_NEW)]
    assert service["ExecStart"].startswith(
        "/opt/tesserad/bin/tesserad serve --config /etc/tesserad/tesserad.toml"
    )
    # The settings file decides: a TESSERA_* variable would rank above it and hide its edits.
    assert "TESSERA_" not in service.get("Environment", "")
    settings = settings_from_toml((DEPLOY / "systemd" / "tesserad.toml").read_text(), tmp_path)
    assert str(settings.data_dir) == DATA_DIR
    assert int(service["TimeoutStopSec"]) > settings.grace_period_s
    assert settings.security.tokens_file == Path("/etc/tesserad/tokens.toml")
    assert settings.http_listen is not None and settings.http_listen.is_loopback
    # The daemon warns below 3 x the per-listener connection limit; the unit gives room above it.
    assert int(service["LimitNOFILE"]) >= 3 * settings.limits.http_max_connections + 1024
    # Triton's clients reach it where they reach gRPC, with the same tokens.
    oip_http = settings.serving.oip_http_listen
    assert oip_http is not None and (oip_http.host, oip_http.port) == (settings.listen.host, OIP_HTTP_PORT)


def load_all(path: Path) -> list[dict]:
    # PyYAML is not a dependency of tesserad (only of these checks); skip where it is absent.
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to check the YAML files under deploy/")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_every_yaml_file_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 6
    for path in files:
        assert load_all(path), path


def test_compose_runs_the_daemon_and_prometheus_scrapes_its_metrics_port(tmp_path):
    compose = load_all(DEPLOY / "compose.yaml")[0]
    daemon = compose["services"]["tesserad"]
    assert daemon["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (DEPLOY / daemon["build"]["context"] / daemon["build"]["dockerfile"]).is_file()
    # The image's settings file, and compose's environment (none now) over it.
    assert "environment" not in daemon
    settings = pod_settings("Dockerfile", {"volumeMounts": []}, {}, tmp_path)
    assert settings.http_listen is not None and settings.serving.oip_http_listen is not None
    assert daemon["ports"] == [
        f"127.0.0.1:{GRPC_PORT}:{settings.listen.port}",
        f"127.0.0.1:{HTTP_PORT}:{settings.http_listen.port}",
        f"127.0.0.1:{OIP_HTTP_PORT}:{settings.serving.oip_http_listen.port}",
    ]
    assert f"tesserad-data:{settings.data_dir}" in daemon["volumes"]
    assert int(daemon["stop_grace_period"].rstrip("s")) > settings.grace_period_s
    assert compose["secrets"]["tesserad-tokens"]["file"] == "./tokens.toml"
    # Compose mounts a file secret at /run/secrets/NAME.
    assert settings.security.tokens_file == Path("/run/secrets/tesserad-tokens")
    prometheus = compose["services"]["prometheus"]
    config_file = DEPLOY / prometheus["volumes"][0].split(":")[0]
    targets = load_all(config_file)[0]["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"tesserad:{settings.metrics_listen.port}"]


def k8s_objects() -> dict[str, dict]:
    """Every object of deploy/k8s/*.yaml and of the optional examples/ (which `kubectl apply -f
    deploy/k8s/` does not read)."""
    paths = sorted((DEPLOY / "k8s").glob("*.yaml")) + sorted((DEPLOY / "k8s" / "examples").glob("*.yaml"))
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for path in paths for doc in load_all(path)}


# What a cluster serves without an operator (no CRD): `kubectl apply -f deploy/k8s/` must not
# fail with "no matches for kind" where the Prometheus Operator or KubeRay is not installed.
BUILT_IN_API_VERSIONS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2", "batch/v1"}


def test_kubectl_apply_of_the_k8s_folder_applies_no_empty_secret_and_no_crd_example():
    applied = [doc for path in (DEPLOY / "k8s").glob("*.yaml") for doc in load_all(path)]
    assert {doc["apiVersion"] for doc in applied} <= BUILT_IN_API_VERSIONS
    kinds = {doc["kind"] for doc in applied}
    assert "Secret" not in kinds
    assert "CronJob" not in kinds
    assert (DEPLOY / "k8s" / "examples" / "secrets.example.yaml").is_file()


def test_k8s_statefulset_probes_ports_volumes_and_settings_agree(tmp_path):
    objects = k8s_objects()
    sts = objects["StatefulSet/tesserad"]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    settings = settings_from_toml(objects["ConfigMap/tesserad-config"]["data"]["tesserad.toml"], tmp_path)

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.http_listen is not None and settings.serving.oip_http_listen is not None
    assert ports == {
        "grpc": settings.listen.port,
        "metrics": settings.metrics_listen.port,
        "http": settings.http_listen.port,
        "oip-http": settings.serving.oip_http_listen.port,
    }
    # Start-up and liveness ask whether the process answers, not whether it is ready: whole-server
    # gRPC health is readiness, NOT_SERVING at a drain or on a replica behind its primary, and a
    # liveness probe on it would restart a pod that only waits. Asked on the gRPC port, which
    # limits.http_max_connections does not cap: a full HTTP listener must not fail liveness.
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["grpc"] == LIVE_PROBE | {"port": settings.listen.port}, probe
    # Readiness: whole-server gRPC health, the daemon's own word, on the port that is always
    # on (serving.oip_http_listen may be off).
    assert container["readinessProbe"]["grpc"] == {"port": settings.listen.port}
    # Probes carry no token: health must stay open while tokens are on.
    assert settings.security.tokens_file is not None and settings.security.health_open
    # A first start after an upgrade runs the store's upgrades before the port binds: the
    # start-up budget is 10 minutes, not the kubelet's default.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    # The store, and the compacted copy a backup writes beside it, fit the volume with room left.
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    volume_bytes = parse_size(claim.replace("Gi", "GiB"))
    assert 2 * settings.store.map_size <= 0.7 * volume_bytes
    # Pods found by annotation are scraped on the metrics port; the Service carries none, or a
    # scrape config that discovers Services by annotation too scrapes the primary twice (every
    # series twice, sums by instance doubled).
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(settings.metrics_listen.port),
    }
    for name in ("Service/tesserad", "Service/tesserad-headless", "Service/tesserad-replica"):
        assert not any(
            k.startswith("prometheus.io/") for k in objects[name]["metadata"].get("annotations", {})
        )

    assert sts["spec"]["replicas"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > settings.grace_period_s

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == str(settings.data_dir)
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert settings.security.tokens_file.parent == Path(mounts["tokens"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tokens"]["secret"]["secretName"] in {n.split("/")[1] for n in objects}
    assert volumes["config"]["configMap"]["name"] == "tesserad-config"


def test_the_k8s_restore_fills_the_claim_the_statefulset_takes_over_as_its_user():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to check the YAML files under deploy/")
    text = (DEPLOY / "README.md").read_text()
    (block,) = [
        b for b in re.findall(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL) if "restore" in b
    ]
    claim, pod = yaml.safe_load_all(block)
    sts = k8s_objects()["StatefulSet/tesserad"]
    (template,) = sts["spec"]["volumeClaimTemplates"]
    # The name the StatefulSet gives its pod 0's claim, which it takes over when it scales up.
    assert claim["metadata"]["name"] == f"{template['metadata']['name']}-{sts['metadata']['name']}-0"
    assert claim["spec"] == template["spec"]
    sts_pod = sts["spec"]["template"]["spec"]
    (daemon,) = sts_pod["containers"]
    (restore,) = pod["spec"]["containers"]
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert pod["spec"]["securityContext"][key] == sts_pod["securityContext"][key] == 10001, key
    # As the daemon's: admitted where the namespace enforces PodSecurity "restricted".
    assert pod["spec"]["securityContext"] == sts_pod["securityContext"]
    assert restore["securityContext"] == daemon["securityContext"]
    assert restore["image"] == daemon["image"]
    (volume,) = pod["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (mount,) = restore["volumeMounts"]
    assert mount["mountPath"] == DATA_DIR
    assert f"tesserad restore - --data-dir {DATA_DIR} <" in text
    assert (
        f"restore - --data-dir {DATA_DIR} <" in text.split("docker compose -f deploy/compose.yaml run", 1)[1]
    )


def test_k8s_service_targets_the_pod_ports():
    objects = k8s_objects()
    service = objects["Service/tesserad"]
    selector = service["spec"]["selector"]
    labels = objects["StatefulSet/tesserad"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("grpc", GRPC_PORT, "grpc"),
        ("metrics", METRICS_PORT, "metrics"),
        ("http", HTTP_PORT, "http"),
        ("oip-http", OIP_HTTP_PORT, "oip-http"),
    }
    assert objects["StatefulSet/tesserad"]["spec"]["serviceName"] == "tesserad-headless"
    assert "Service/tesserad-headless" in objects


def test_k8s_replicas_follow_the_primary_behind_a_headless_service_and_an_autoscaler(tmp_path):
    objects = k8s_objects()
    deployment = objects["Deployment/tesserad-replica"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    settings = settings_from_toml(
        objects["ConfigMap/tesserad-replica-config"]["data"]["tesserad.toml"], tmp_path
    )

    # The primary by the StatefulSet pod's stable name, on the primary's gRPC port.
    sts = objects["StatefulSet/tesserad"]
    host, port = settings.replica.primary.rsplit(":", 1)
    assert host == f"{sts['metadata']['name']}-0.{sts['spec']['serviceName']}"
    assert int(port) == GRPC_PORT
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert settings.replica.token_file is not None and settings.replica.token_file.parent == Path(
        mounts["primary-token"]
    )
    assert settings.security.tokens_file is not None and settings.security.health_open
    assert mounts["cache"] == str(settings.data_dir)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.serving.oip_http_listen is not None
    assert ports == {
        "grpc": settings.listen.port,
        "metrics": settings.metrics_listen.port,
        "oip-http": settings.serving.oip_http_listen.port,
    }
    # Not ready (400) until caught up with the primary, as gRPC health; alive all the while, so
    # a replica whose primary is down, or refuses its token, waits instead of restarting in a loop.
    assert container["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "oip-http"}
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["grpc"] == LIVE_PROBE | {"port": settings.listen.port}, probe

    # Replica pods are not selected by the primary's Services, and only by the replicas' one.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for name in ("Service/tesserad", "Service/tesserad-headless"):
        assert not objects[name]["spec"]["selector"].items() <= labels.items(), name
    service = objects["Service/tesserad-replica"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("grpc", GRPC_PORT, "grpc"),
        ("oip-http", OIP_HTTP_PORT, "oip-http"),
        ("metrics", METRICS_PORT, "metrics"),
    }
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(settings.metrics_listen.port),
    }
    # A drain evicts one replica at a time, and replicas spread over nodes and zones.
    pdb = objects["PodDisruptionBudget/tesserad-replica"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 < deployment["spec"]["replicas"]
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(c["labelSelector"]["matchLabels"].items() <= labels.items() for c in spread)

    hpa = objects["HorizontalPodAutoscaler/tesserad-replica"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tesserad-replica",
    }
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert "cpu" in container["resources"]["requests"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TESSERA_REPLICA_ADVERTISE"]["value"] == f"$(POD_IP):{settings.listen.port}"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_ray_compose_points_the_daemon_at_its_ray_head_and_the_workers_back_at_the_daemon(tmp_path):
    compose = load_all(DEPLOY / "ray" / "compose.yaml")[0]
    services = compose["services"]
    daemon = services["tesserad"]
    env = [{"name": name, "value": value} for name, value in daemon["environment"].items()]
    settings = pod_settings("Dockerfile", {"volumeMounts": [], "env": env}, {}, tmp_path)
    assert settings.training.backend == "ray"
    assert settings.serving.oip_http_listen is not None
    assert f"127.0.0.1:{OIP_HTTP_PORT}:{settings.serving.oip_http_listen.port}" in daemon["ports"]
    head = services["ray-head"]["command"]
    assert "--head" in head and settings.training.ray_address == "ray-head:" + next(
        a.split("=")[1] for a in head if a.startswith("--port=")
    )
    assert "--address=" + settings.training.ray_address in services["ray-worker"]["command"]
    assert settings.training.ray_daemon_target == f"tesserad:{settings.listen.port}"
    assert settings.security.tokens_file is not None and settings.training.ray_worker_token_file is not None
    assert {s["build"]["args"]["EXTRAS"] for s in services.values()} == {"[ray]"}


def test_kuberay_cluster_and_the_daemons_settings_agree():
    cluster, config = load_all(DEPLOY / "k8s" / "ray" / "raycluster.yaml")
    assert cluster["kind"] == "RayCluster" and config["kind"] == "ConfigMap"
    settings = env_settings(config["data"])
    assert settings.training.backend == "ray"
    assert settings.training.ray_address == f"{cluster['metadata']['name']}-head-svc:6379"
    assert settings.training.ray_daemon_target == f"tesserad:{GRPC_PORT}"
    pinned = re.search(r"^ray==(\S+)$", (DEPLOY.parent / "constraints.txt").read_text(), re.MULTILINE)
    assert pinned and cluster["spec"]["rayVersion"] == pinned.group(1)


def deploy_texts() -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(DEPLOY.rglob("*")) if path.is_file()}


# A setting's dotted name in prose or comments; `security.tls_*` names a family, and a host name
# such as tesserad-replica.default.svc is not a setting.
_SETTING_NAME = re.compile(
    r"(?<![\w.-])((?:store|serving|training|nn|limits|registry|security|replica)\.[a-z_]+)\b(?!\*)"
)


def test_every_setting_and_variable_the_deploy_files_name_exists():
    from tesserad.config import describe_settings

    settings = describe_settings()
    names = {info.name for info in settings}
    variables = {info.env for info in settings} | set(CLIENT_ENV_NAMES)
    wrong = []
    for path, text in deploy_texts().items():
        wrong += [f"{path.name}: {name}" for name in _SETTING_NAME.findall(text) if name not in names]
        wrong += [
            f"{path.name}: {env}" for env in re.findall(r"TESSERA_[A-Z0-9_]+", text) if env not in variables
        ]
    assert not wrong


def command_segments(path: Path, text: str) -> list[str]:
    """The pieces of `text` a command may be written in, each on one line: in Markdown the lines
    of code blocks and the inline code spans (which may wrap), elsewhere the lines, with backslash
    continuations (in comments too) joined."""
    text = re.sub(r"\\\n[ \t#]*", " ", text)
    if path.suffix != ".md":
        return text.splitlines()
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    spans = [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    return [line for block in blocks for line in block.splitlines()] + spans


def _options(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _subcommands(parser) -> dict[str, object]:
    return next(a.choices for a in parser._actions if isinstance(a.choices, dict))


def test_every_flag_of_a_tesserad_command_in_the_deploy_files_exists(capsys):
    from tesserad.cli import build_parser
    from tesserad.tools import healthcheck

    commands = _subcommands(build_parser())
    flags_of = {name: _options(commands[name]) for name in ("serve", "restore", "settings")}
    flags_of |= {f"tokens {name}": _options(p) for name, p in _subcommands(commands["tokens"]).items()}
    with pytest.raises(SystemExit):
        healthcheck.main(["--help"])
    flags_of["healthcheck"] = set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))
    used = []
    for path, text in deploy_texts().items():
        for segment in command_segments(path, text):
            for match in re.finditer(
                r"tesserad (serve|restore|settings|tokens \w+)\b|tesserad\.tools\.(healthcheck)\b", segment
            ):
                command = match.group(1) or match.group(2)
                # The flags up to the next command, shell operator or comment belong to this one.
                rest = re.split(r"tesserad[ .]|&&|\||;|\]|#|kubectl", segment[match.end() :])[0]
                used += [(path.name, command, flag) for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest)]
    assert {command for _, command, _ in used} >= {"serve", "tokens add", "tokens remove", "healthcheck"}
    assert [u for u in used if u[2] not in flags_of[u[1]]] == []


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = []
    for name in ("tesserad.service", "tesserad-backup.service", "tesserad-backup.timer"):
        text = (DEPLOY / "systemd" / name).read_text()
        # The venv is not installed here; any executable stands in for its tesserad.
        units.append(tmp_path / name)
        units[-1].write_text(text.replace("/opt/tesserad/bin/tesserad ", f"{shutil.which('true')} "))
    result = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60)
    # A misspelt key or a bad value is only warned about ("ignoring"), with status 0.
    assert (result.returncode, result.stderr) == (0, "")


def test_the_ray_patch_gives_the_daemon_ray_its_settings_and_the_workers_token():
    cluster, config = load_all(DEPLOY / "k8s" / "ray" / "raycluster.yaml")
    patch = load_all(DEPLOY / "k8s" / "patches" / "statefulset-ray.yaml")[0]
    pod = patch["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    daemon = k8s_objects()["StatefulSet/tesserad"]["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == daemon["name"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    settings = env_settings(config["data"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (name,) = mounts
    assert settings.training.ray_worker_token_file == Path(mounts[name]) / "token"
    assert volumes[name]["secret"]["secretName"] == "tesserad-ray-worker-token"
    # torch with CUDA, and Ray, for the daemon (a GPU pod) and the GPU workers alike: the CUDA
    # image built with the ray extra; the CPU image's torch has no CUDA.
    images = {
        group["groupName"]: group["template"]["spec"]["containers"][0]["image"]
        for group in cluster["spec"]["workerGroupSpecs"]
    }
    assert container["image"] == images["gpu"] == "tesserad:cuda-ray" != daemon["image"]
    assert images["cpu"] == "tesserad:ray"
    cuda = (DEPLOY / "docker" / "Dockerfile.cuda").read_text()
    assert 'ARG EXTRAS=""' in cuda and '-c constraints.txt ./clients/python ".${EXTRAS}"' in cuda
    assert (
        "--build-arg EXTRAS=[ray] -t tesserad:cuda-ray"
        in (DEPLOY / "k8s" / "ray" / "raycluster.yaml").read_text()
    )


def test_the_ray_patch_merges_into_the_statefulset_keeping_its_mounts():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read kubectl's output")
    # --local: the merge kubectl would send, worked out without a cluster.
    result = subprocess.run(
        [
            kubectl,
            "patch",
            "--local",
            "-o",
            "yaml",
            "-f",
            str(DEPLOY / "k8s" / "statefulset.yaml"),
            "--patch-file",
            str(DEPLOY / "k8s" / "patches" / "statefulset-ray.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    pod = yaml.safe_load(result.stdout)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "tesserad:cuda-ray"
    assert {m["name"] for m in container["volumeMounts"]} == {
        "data",
        "config",
        "tokens",
        "tmp",
        "ray-worker-token",
    }
    assert {v["name"] for v in pod["volumes"]} == {"config", "tokens", "tmp", "ray-worker-token"}


def test_the_monitors_scrape_the_metrics_ports_with_the_label_the_alerts_select():
    objects = k8s_objects()
    for monitor, workload, endpoints in [
        ("ServiceMonitor/tesserad", "StatefulSet/tesserad", "endpoints"),
        ("PodMonitor/tesserad-replica", "Deployment/tesserad-replica", "podMetricsEndpoints"),
    ]:
        spec = objects[monitor]["spec"]
        labels = objects[workload]["spec"]["template"]["metadata"]["labels"]
        (endpoint,) = spec[endpoints]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        assert endpoint["relabelings"] == [
            {
                "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                "targetLabel": "app_kubernetes_io_name",
            }
        ]
        container = objects[workload]["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": METRICS_PORT} in container["ports"]
        if monitor.startswith("ServiceMonitor"):
            service = objects["Service/tesserad"]
            assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
            assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
        else:
            assert spec["selector"]["matchLabels"].items() <= labels.items()
    # The rules' label values are the pods' label values.
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert 'app_kubernetes_io_name="tesserad"' in alerts
    assert (
        'app_kubernetes_io_name="tesserad-replica"'
        in (DEPLOY / "prometheus" / "alerts-replicas.yml").read_text()
    )


def test_the_backup_cronjob_backs_the_primary_up_with_an_admin_token_and_keeps_the_newest():
    objects = k8s_objects()
    cron = objects["CronJob/tesserad-backup"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    service = objects["Service/tesserad"]
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert env["TESSERA_TARGET"]["value"] == f"{service['metadata']['name']}:{grpc_port}"
    assert env["TESSERA_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "tesserad-backup-token"
    assert int(env["KEEP"]["value"]) >= 1
    script = container["command"][-1]
    assert container["command"][:2] == ["/bin/sh", "-ec"]
    # The CLI writes a hidden partial and renames it once whole (run_backup_script checks the rest).
    assert 'tessera admin backup -o "$archive" --no-progress' in script
    assert "tail -n +$((KEEP + 1))" in script
    # The CPU image of the daemon's build: a backup needs no GPU.
    assert container["image"] == "tesserad:cpu"
    sts = objects["StatefulSet/tesserad"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == sts["securityContext"]
    assert container["securityContext"] == sts["containers"][0]["securityContext"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["backups"] == "/backups"
    claim = volumes["backups"]["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in objects


def test_the_systemd_backup_timer_runs_the_backup_service_daily_keeping_the_newest(tmp_path):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((DEPLOY / "systemd" / "tesserad-backup.service").read_text())
    service = unit["Service"]
    assert service["Type"] == "oneshot" and service["User"] == "tesserad"
    assert '/opt/tesserad/bin/tessera admin backup -o "$a" --no-progress' in service["ExecStart"]
    assert "tail -n +$((KEEP + 1))" in service["ExecStart"]
    backups = f"/var/lib/{service['StateDirectory']}/"
    assert service["ExecStart"].count(backups) == 3
    # A backup never starts a daemon an operator stopped (Wants= would): it fails instead.
    assert unit["Unit"]["Requisite"] == unit["Unit"]["After"] == "tesserad.service"
    assert "Wants" not in unit["Unit"]
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.optionxform = str
    timer.read_string((DEPLOY / "systemd" / "tesserad-backup.timer").read_text())
    assert timer["Timer"]["Persistent"] == "true" and timer["Timer"]["OnCalendar"]
    settings = settings_from_toml((DEPLOY / "systemd" / "tesserad.toml").read_text(), tmp_path)
    text = (DEPLOY / "systemd" / "tesserad-backup.service").read_text()
    assert f"\nEnvironment=TESSERA_TARGET=127.0.0.1:{settings.listen.port}\n" in text


# Stands in for `tessera admin backup -o FILE --no-progress` as the CLI writes FILE: a hidden
# partial beside it (tessera.transfer.new_partial's name), renamed once whole; with FAIL set, the
# run is cut off and the partial stays, as after a SIGKILL.
FAKE_TESSERA = """#!/bin/sh
[ "$1 $2 $3 $5" = "admin backup -o --no-progress" ] || exit 64
partial="$(dirname "$4")/.$(basename "$4").0badc0de.partial"
echo archive > "$partial"
[ -z "$FAIL" ] || exit 1
mv "$partial" "$4"
"""


def backup_scripts() -> dict[str, tuple[str, str]]:
    """The shell script of the CronJob and of the systemd unit, each with its backup folder."""
    (container,) = k8s_objects()["CronJob/tesserad-backup"]["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]["containers"]
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((DEPLOY / "systemd" / "tesserad-backup.service").read_text())
    exec_start = unit["Service"]["ExecStart"]
    prefix = "/bin/sh -ec '"
    assert exec_start.startswith(prefix) and exec_start.endswith("'")
    # systemd turns %% into %; the venv's tessera is the one on PATH here.
    systemd = (
        exec_start[len(prefix) : -1].replace("%%", "%").replace("/opt/tesserad/bin/tessera ", "tessera ")
    )
    return {
        "cronjob": (container["command"][-1], "/backups"),
        "systemd": (systemd, f"/var/lib/{unit['Service']['StateDirectory']}"),
    }


@pytest.mark.parametrize("which", ["cronjob", "systemd"])
def test_a_backup_run_keeps_the_newest_archives_and_clears_partials_a_killed_run_left(which, tmp_path):
    script, folder = backup_scripts()[which]
    backups = tmp_path / "backups"
    backups.mkdir()
    script = script.replace(folder, str(backups))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tessera").write_text(FAKE_TESSERA)
    (bin_dir / "tessera").chmod(0o755)
    old = [backups / f"tessera-2026010{day}T031700Z.tar" for day in range(1, 5)]
    for day, path in enumerate(old, start=1):
        path.write_text("old")
        os.utime(path, (day * 86400, day * 86400))
    stale = backups / ".tessera-20260104T031700Z.tar.1234abcd.partial"
    stale.write_text("cut off")
    other = backups / "notes.txt"
    other.write_text("kept")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "KEEP": "3"}

    # A failed backup removes no archive: the old ones are all there is.
    failed = subprocess.run(["/bin/sh", "-ec", script], env=env | {"FAIL": "1"}, timeout=30)
    assert failed.returncode != 0
    assert all(path.exists() for path in old)
    # The earlier run's partial is gone; this one's stays for the next run.
    assert not stale.exists() and len(list(backups.glob(".tessera-*.partial"))) == 1

    assert subprocess.run(["/bin/sh", "-ec", script], env=env, timeout=30).returncode == 0
    (new,) = set(backups.glob("tessera-*.tar")) - set(old)
    assert new.read_text() == "archive\n"
    # The newest KEEP archives, the new one among them; every partial gone, other files kept.
    assert sorted(backups.iterdir()) == sorted([new, old[2], old[3], other])


def test_the_prometheusrule_command_of_the_monitoring_example_wraps_the_alert_files_groups():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to check the YAML files under deploy/")
    text = (DEPLOY / "k8s" / "examples" / "monitoring.yaml").read_text()
    (line,) = [
        line for line in text.splitlines() if "kind: PrometheusRule" in line and "kubectl apply" in line
    ]
    command = line.removeprefix("#").strip().removesuffix("| kubectl apply -f -")
    result = subprocess.run(
        ["/bin/sh", "-c", command], cwd=DEPLOY.parent, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    rule = yaml.safe_load(result.stdout)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == load_all(DEPLOY / "prometheus" / "alerts.yml")[0]
    # The example's own rule (kube-state-metrics') points at a runbook section that exists.
    backup_jobs = k8s_objects()["PrometheusRule/tesserad-backup-jobs"]
    (group,) = backup_jobs["spec"]["groups"]
    (alert,) = group["rules"]
    runbook = (DEPLOY.parent / "docs" / "runbook.md").read_text()
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#tesseradbackuptooold"
    assert "\n## TesseradBackupTooOld\n" in runbook
