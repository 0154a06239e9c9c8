"""The deployment files (deploy/, docs/deploy.md) cannot run here (no images can be pulled): they are parsed, and
every `python -m mildnet ...` they run is parsed by the real CLI, so a renamed option fails here, not in production.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = PROJECT_ROOT / "deploy"
MILDNET_COMMAND = re.compile(r"python -m mildnet ([^;&|\n]+)")


def _commands(value) -> list[list[str]]:
    """Every `python -m mildnet` invocation in a compose/k8s command (a list, or shell text inside one)."""
    if value is None:
        return []
    parts = value if isinstance(value, list) else [value]
    if parts[:3] == ["python", "-m", "mildnet"]:
        return [[str(p) for p in parts[3:]]]
    found = []
    for part in parts:
        for match in MILDNET_COMMAND.finditer(str(part)):
            found.append(shlex.split(match.group(1).replace("${JOB_COMPLETION_INDEX}", "0")))
    return found


def _parses(argv: list[str]) -> None:
    from mildnet.cli import build_parser

    args = build_parser().parse_args(argv)  # SystemExit (a failed test) on an unknown option or command
    assert callable(args.func)


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def _manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name.endswith("-values.yaml"):
            continue  # Helm values, not manifests
        docs.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc)
    return docs


def test_compose_has_every_part_and_its_mildnet_commands_parse():
    compose = _compose()
    services = compose["services"]
    assert {"milvus", "etcd", "minio", "redis", "api", "proxy", "app", "embed"} <= set(services)
    build = services["api"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    commands = [c for s in services.values() for key in ("command", "entrypoint") for c in _commands(s.get(key))]
    assert {c[0] for c in commands} >= {"serve", "app", "data", "embed"}
    for argv in commands:
        _parses(argv)
    api = services["api"]
    assert api["environment"]["MILDNET_INDEX"].startswith("milvus://") and api["deploy"]["replicas"] >= 2
    assert "--no-embed" in api["command"] and api["secrets"] == ["api_keys"]
    for name, service in services.items():
        for other in service.get("depends_on", {}):
            assert other in services, f"{name} depends on unknown service {other}"
    for volume in (v.split(":")[0] for s in services.values() for v in s.get("volumes", [])):
        assert volume.startswith(".") or volume in compose["volumes"], volume


def test_index_and_store_addresses_in_the_files_are_what_the_code_accepts():
    from mildnet.search.index import parse_index_spec
    from mildnet.store.urls import check_redis_url

    envs = [_compose()["services"]["api"]["environment"]]
    for _, doc in _manifests():
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            envs.append({e["name"]: e.get("value") for e in container.get("env", [])})
    checked = 0
    for env in envs:
        if env.get("MILDNET_INDEX"):
            assert parse_index_spec(env["MILDNET_INDEX"])[0] == "milvus"
            checked += 1
        if env.get("MILDNET_STORE"):
            check_redis_url(env["MILDNET_STORE"])
    assert checked >= 4


def test_kubernetes_sketch_is_consistent(tmp_path):
    docs = _manifests()
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in docs}
    assert {("Deployment", "mildnet-api"), ("HorizontalPodAutoscaler", "mildnet-api"), ("Service", "mildnet-api"),
            ("Deployment", "mildnet-app"), ("Job", "mildnet-embed")} <= kinds
    deployments = {doc["metadata"]["name"]: doc for _, doc in docs if doc["kind"] == "Deployment"}
    for _, doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        if doc["kind"] == "HorizontalPodAutoscaler":
            assert doc["spec"]["scaleTargetRef"]["name"] in deployments
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
            assert any(selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                       for d in deployments.values()), doc["metadata"]["name"]
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            for argv in _commands(container.get("command")):
                _parses(argv)
    values = yaml.safe_load((DEPLOY / "k8s" / "milvus-values.yaml").read_text(encoding="utf-8"))
    assert values["cluster"]["enabled"] is True and values["queryNode"]["replicas"] >= 2
    # The probes point at routes the API has.
    from mildnet.api.server import create_app
    from mildnet.search.engine import Catalogue, LoadedModel, SearchEngine
    from mildnet.store import LocalStore

    # An engine that holds nothing yet (the API starts, and answers 503 until it is embedded).
    idle = SearchEngine(LoadedModel(None, {}, "none", 8, "0" * 64), Catalogue("shop", tmp_path, ("a.jpg",)),
                        LocalStore(tmp_path / "store"), "shop/" + "0" * 16, None)
    routes = {route.path for route in create_app([idle]).routes}
    api = deployments["mildnet-api"]["spec"]["template"]["spec"]["containers"][0]
    assert {api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]} <= routes


def test_dockerfile_copies_what_exists_and_runs_a_real_command():
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (PROJECT_ROOT / source).exists(), f"Dockerfile copies missing {source}"
    cmd = re.search(r'^CMD (\[.*\])$', text, re.MULTILINE)
    argv = yaml.safe_load(cmd.group(1))
    assert argv[:3] == ["python", "-m", "mildnet"]
    _parses(argv[3:])


def test_the_proxy_lets_the_apis_own_upload_limit_answer():
    from mildnet.data.images import MAX_FILE_BYTES

    size = re.search(r"client_max_body_size (\d+)m;", (DEPLOY / "nginx.conf").read_text(encoding="utf-8"))
    assert int(size.group(1)) * 2**20 > MAX_FILE_BYTES  # larger, so a too-big photo gets the API's JSON message


def test_deploy_doc_names_files_that_exist():
    doc = (PROJECT_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(deploy/[\w./-]+)`", doc))
    assert named and all((PROJECT_ROOT / path).exists() for path in named), named
