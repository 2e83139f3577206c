"""ops/: the Dockerfile and the compose files, checked without a Docker engine: every file
they copy or mount exists, and service names, ports and paths agree with
configs/prometheus.yml, configs/alertmanager.yml, the Grafana provisioning and the daemon's
container settings. ops/smoke.py builds the images and runs the stacks for real (.ci/run
runs it); these checks fail fast and run where no engine does."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from monitord.settings import load_settings

ROOT = Path(__file__).parents[1]
OPS = ROOT / "ops"
CONFIGS = ROOT / "configs"
COMPOSE = yaml.safe_load((OPS / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PORTS = {"monitord": 8000, "prometheus": 9090, "alertmanager": 9093, "grafana": 3000}


def mounts(service: str) -> dict[str, Path | str]:
    """Container path → host path (bind mounts, resolved against ops/) or volume name."""
    result: dict[str, Path | str] = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        result[target] = (OPS / source).resolve() if source.startswith((".", "/")) else source
    return result


def mount_of(service: str, host_path: Path) -> PurePosixPath:
    targets = [target for target, source in mounts(service).items() if source == host_path.resolve()]
    assert len(targets) == 1, f"{service} should mount {host_path} once: {mounts(service)}"
    return PurePosixPath(targets[0])


def flag(service: str, name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in SERVICES[service].get("command", []) if arg.startswith(f"--{name}=")]
    assert len(values) == 1, (service, name)
    return values[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in (OPS / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    assert not current, "a continuation line at the end of the Dockerfile"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def test_compose_runs_the_four_services_with_their_ports() -> None:
    assert set(SERVICES) == set(PORTS)
    for service, port in PORTS.items():
        published = [str(p) for p in SERVICES[service]["ports"]]
        assert any(p.endswith(f":{port}:{port}") or p == f"{port}:{port}" for p in published), (service, published)
    assert set(SERVICES["prometheus"]["depends_on"]) >= {"monitord", "alertmanager"}


def test_every_file_the_compose_file_mounts_or_builds_from_exists() -> None:
    named = set(COMPOSE.get("volumes", {}))
    for service in SERVICES:
        for target, source in mounts(service).items():
            if isinstance(source, Path):
                assert source.exists(), f"{service} mounts {source}, which does not exist"
                assert ROOT in source.parents, f"{service} mounts {source} from outside the repository"
            else:
                assert source in named, f"{service} uses the undeclared volume {source!r}"
    build = SERVICES["monitord"]["build"]
    context = (OPS / build["context"]).resolve()
    assert context == ROOT and (context / build["dockerfile"]).is_file()


def test_prometheus_scrapes_the_compose_services() -> None:
    config = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for c in jobs["monitord"]["static_configs"] for t in c["targets"]]
    assert targets == [f"monitord:{PORTS['monitord']}"]
    alertmanagers = [t for a in config["alerting"]["alertmanagers"] for c in a["static_configs"] for t in c["targets"]]
    assert alertmanagers == [f"alertmanager:{PORTS['alertmanager']}"]
    # The config and the rules land where the server looks for them.
    config_path = PurePosixPath(flag("prometheus", "config.file"))
    assert mount_of("prometheus", CONFIGS / "prometheus.yml") == config_path
    for rule_file in config["rule_files"]:
        assert mount_of("prometheus", CONFIGS / rule_file) == config_path.parent / rule_file
    assert flag("prometheus", "storage.tsdb.path") in mounts("prometheus")


def test_the_local_prometheus_config_differs_only_in_targets_and_rule_path() -> None:
    shipped = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
    local = yaml.safe_load((CONFIGS / "local" / "prometheus.yml").read_text())
    assert [(CONFIGS / "local" / f).resolve() for f in local["rule_files"]] == \
        [(CONFIGS / f).resolve() for f in shipped["rule_files"]]
    as_text = json.dumps({k: v for k, v in local.items() if k != "rule_files"})
    as_text = as_text.replace("127.0.0.1:8000", "monitord:8000").replace("127.0.0.1:9093", "alertmanager:9093")
    assert json.loads(as_text) == {k: v for k, v in shipped.items() if k != "rule_files"}


def test_alertmanager_runs_the_shipped_config() -> None:
    assert mount_of("alertmanager", CONFIGS / "alertmanager.yml") == PurePosixPath(flag("alertmanager", "config.file"))
    assert flag("alertmanager", "storage.path") in mounts("alertmanager")


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard_as_home() -> None:
    provisioning = mount_of("grafana", CONFIGS / "grafana" / "provisioning")
    assert provisioning == PurePosixPath("/etc/grafana/provisioning")
    datasource = yaml.safe_load((CONFIGS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert [d["url"] for d in datasource["datasources"]] == [f"http://prometheus:{PORTS['prometheus']}"]
    dashboards = mount_of("grafana", CONFIGS / "grafana" / "dashboards")
    provider = yaml.safe_load((CONFIGS / "grafana/provisioning/dashboards/monitord.yml").read_text())
    assert PurePosixPath(provider["providers"][0]["options"]["path"]) == dashboards
    environment = SERVICES["grafana"]["environment"]
    home = PurePosixPath(environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == dashboards and (CONFIGS / "grafana" / "dashboards" / home.name).is_file()
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"


def test_the_daemon_container_settings_match_the_volumes_and_services() -> None:
    config_path = PurePosixPath(mount_of("monitord", OPS / "monitord.toml"))
    settings = load_settings(OPS / "monitord.toml")  # valid settings: the daemon would start with them
    volumes = {target: source for target, source in mounts("monitord").items() if isinstance(source, str)}
    assert volumes == {"/var/lib/monitord/inbox": "inbox", "/var/lib/monitord/state": "state"}
    assert str(settings.folder.inbox) == "/var/lib/monitord/inbox"
    assert str(settings.state_dir) == "/var/lib/monitord/state"
    for path in (settings.folder.processed, settings.folder.failed):
        assert PurePosixPath(path).is_relative_to("/var/lib/monitord/state"), path  # kept on a volume
    assert settings.http.port == PORTS["monitord"]
    raw = tomllib.loads((OPS / "monitord.toml").read_text())
    urls = [sink["url"] for sink in raw["sinks"] if sink["type"] == "alertmanager"]
    assert urls == [f"http://alertmanager:{PORTS['alertmanager']}"]
    # The image's CMD reads the file where compose mounts it.
    cmd = json.loads(dict(final_stage())["CMD"])
    assert cmd == ["run", "--config", str(config_path)]


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck_on_healthz() -> None:
    instructions = dockerfile_instructions()
    assert sum(name == "FROM" for name, _ in instructions) >= 2
    final = final_stage()
    users = [args for name, args in final if name == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users
    healthcheck = [args for name, args in final if name == "HEALTHCHECK"]
    assert len(healthcheck) == 1 and "/healthz" in healthcheck[0] and f":{PORTS['monitord']}/" in healthcheck[0]
    assert "curl" not in healthcheck[0] and "urllib" in healthcheck[0]
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["monitord"]
    assert dict(final)["EXPOSE"].split() == [str(PORTS["monitord"])]
    env = " ".join(args for name, args in final if name == "ENV")
    assert "MONITORD_HTTP__HOST=0.0.0.0" in env  # reachable by Prometheus from its own container
    assert dict(final)["WORKDIR"] == "/var/lib/monitord"
    volumes = json.loads(dict(final)["VOLUME"])
    assert set(volumes) == set(k for k, v in mounts("monitord").items() if isinstance(v, str))


def dockerfile_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for name, arg in dockerfile_instructions() if name == "ARG" and "=" in arg)


def test_dockerfile_installs_the_pinned_cpu_torch_by_default() -> None:
    args = dockerfile_args()
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE))
    assert (args["TORCH_VERSION"], args["TORCHVISION_VERSION"]) == (pins["torch"], pins["torchvision"])


def copy_sources() -> list[str]:
    sources = []
    for name, args in dockerfile_instructions():
        if name in {"COPY", "ADD"}:
            words = shlex.split(args)
            if any(word.startswith("--from") for word in words):
                continue
            sources += [word for word in words[:-1] if not word.startswith(("--", "$"))]
    return sources


def test_every_copy_source_exists_and_is_not_dockerignored() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    sources = copy_sources()
    assert "monitord" in sources and "ops/monitord.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        parts = PurePosixPath(source).parts
        for pattern in ignored:
            for depth in range(1, len(parts) + 1):
                assert not fnmatch.fnmatch("/".join(parts[:depth]), pattern), f".dockerignore {pattern} hides {source}"


def test_both_stages_start_from_the_base_image_argument_default_python_slim() -> None:
    froms = [args.split()[0] for name, args in dockerfile_instructions() if name == "FROM"]
    assert froms and all(image == "${BASE_IMAGE}" for image in froms), froms
    assert dockerfile_args()["BASE_IMAGE"] == "python:3.11-slim"


def test_the_wheelhouse_is_optional_and_when_given_the_only_source() -> None:
    # Unset, the COPY takes pyproject.toml alone; set, every pip install is --no-index.
    assert dockerfile_args()["WHEELHOUSE"] == ""
    copies = [shlex.split(args) for name, args in dockerfile_instructions() if name == "COPY"]
    assert ["pyproject.toml", "${WHEELHOUSE}", "/tmp/wheelhouse/"] in copies
    installs = [args for name, args in dockerfile_instructions() if name == "RUN" and "pip install" in args]
    assert len(installs) == 2
    for run in installs:
        assert '[ -n "${WHEELHOUSE}" ]' in run and "--no-index --find-links /tmp/wheelhouse" in run
    assert "wheelhouse" not in (ROOT / ".dockerignore").read_text()
    assert "/wheelhouse/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("base, override", [("docker-compose.yml", "docker-compose.local.yml"),
                                            ("docker-compose.scale.yml", "docker-compose.scale.local.yml")])
def test_the_local_override_builds_every_pulled_image_from_the_local_base(base: str, override: str) -> None:
    base_services = yaml.safe_load((OPS / base).read_text())["services"]
    local = yaml.safe_load((OPS / override).read_text())["services"]
    assert set(local) == set(base_services)
    for name, service in base_services.items():
        if name == "grafana":  # no Debian package: started only when asked
            assert local[name] == {"profiles": ["grafana"]}
            continue
        build = local[name]["build"]
        assert build["args"]["BASE_IMAGE"] == "monitord-base:bookworm"
        if "build" in service:  # monitord itself: from the wheelhouse
            assert build["args"]["WHEELHOUSE"] == "wheelhouse"
            assert (build.get("context"), build.get("dockerfile")) in {(None, None), ("..", "ops/Dockerfile")}
        else:
            context = OPS / build["context"]
            assert (context / "Dockerfile").is_file()
            assert local[name]["image"].startswith("monitord-local/")
            assert "ARG BASE_IMAGE=monitord-base:bookworm" in (context / "Dockerfile").read_text()


@pytest.mark.parametrize("plugin", ["monitord-torchvision", "monitord-drift", "monitord-redis", "monitord-evidently"])
def test_the_image_installs_every_first_party_plugin(plugin: str) -> None:
    assert f"plugins/{plugin}" in copy_sources()
    run = " ".join(args for name, args in dockerfile_instructions() if name == "RUN")
    assert f"./plugins/{plugin}" in run


# -- the scaled-out variant: Redis, two inference services, a monitor --------------------------

SCALE = yaml.safe_load((OPS / "docker-compose.scale.yml").read_text())
MONITORD_SERVICES = {"inference-a": "inference", "inference-b": "inference", "monitor": "monitor"}


def test_the_scaled_out_compose_file_joins_its_roles_by_its_redis() -> None:
    services = SCALE["services"]
    assert set(services) == set(MONITORD_SERVICES) | {"redis", "prometheus", "alertmanager", "grafana"}
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    published, states = set(), set()
    for name, role in MONITORD_SERVICES.items():
        service = services[name]
        environment = service["environment"]
        assert environment["MONITORD_ROLE"] == role
        assert environment["MONITORD_BUS__URL"] == "redis://redis:6379/0" and "redis" in service["depends_on"]
        assert environment["MONITORD_ALERTS__INSTANCE"] == f"{name}:8000"  # Prometheus's name for it
        settings = load_settings(OPS / "monitord.toml", **{"bus": {"url": environment["MONITORD_BUS__URL"]}})
        assert settings.bus.transport == "redis"
        (port,) = service["ports"]
        published.add(port)
        state = [v.split(":")[0] for v in service["volumes"] if v.endswith(":/var/lib/monitord/state")]
        states.update(state)
        assert service["build"]["dockerfile"] == "ops/Dockerfile"
    assert len(published) == 3 and len(states) == 3  # a port and a state volume each
    # Both inference services serve one model, from one volume.
    models = {environment["MONITORD_MODEL__ARTIFACT"] for environment in
              (services[name]["environment"] for name, role in MONITORD_SERVICES.items() if role == "inference")}
    assert len(models) == 1
    assert set(SCALE["volumes"]) >= {"redis", "model", "state-a", "state-b", "state-monitor"}


def test_prometheus_scrapes_every_process_of_the_scaled_out_stack() -> None:
    config = yaml.safe_load((CONFIGS / "prometheus.scale.yml").read_text())
    targets = [t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert sorted(targets) == sorted(f"{name}:8000" for name in MONITORD_SERVICES)
    mounted = [v.split(":")[0] for v in SCALE["services"]["prometheus"]["volumes"]]
    assert "../configs/prometheus.scale.yml" in mounted
    # Otherwise the same file as prometheus.yml.
    shipped = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = ["monitord:8000"]
    assert config == shipped
