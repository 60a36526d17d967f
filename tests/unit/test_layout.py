"""The dependency rule of docs/architecture.md, checked on the code's own imports:

- a service imports ``shared`` and itself, never another service;
- ``shared`` imports no service and no tool;
- nothing under ``services`` or ``shared`` imports ``tools`` (tools may import anything);
- a domain module (``shared/floor``, each service's ``domain`` module or package) imports
  no I/O (Kafka, Redis, HTTP, sockets, the event loop) and no adapter of the project, and
  reads no clock: time comes in as an argument.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("checkin", "flow", "notifications", "billing")
IO_MODULES = {"aiokafka", "faststream", "redis", "fastapi", "starlette", "httpx", "uvicorn",
              "asyncio", "socket", "smtplib", "aiosmtplib", "subprocess", "requests",
              "urllib", "http", "ssl", "os", "pathlib", "prometheus_client", "structlog"}
# project modules a domain module may use besides other domain modules: the event models
# and the refusal kinds, pure both
PURE_PROJECT_MODULES = {"shared.events", "shared.events_billing",
                        "shared.events_notifications", "shared.errors"}
CLOCK_READS = {("datetime", "now"), ("datetime", "utcnow"), ("date", "today"),
               ("time", "time"), ("time", "monotonic"), ("time", "perf_counter")}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(*tops: str, root: Path = REPO) -> list[Path]:
    return sorted(p for top in tops for p in (root / top).rglob("*.py"))


def imports_of(path: Path, root: Path = REPO) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    package = module_name(path, root).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def is_domain(name: str) -> bool:
    parts = name.split(".")
    if parts[:2] == ["shared", "floor"]:
        return True
    return len(parts) >= 3 and parts[0] == "services" and parts[2] == "domain"


def cross_service_imports(root: Path = REPO) -> list[str]:
    wrong = []
    for path in python_files("services", root=root):
        name = module_name(path, root)
        if name.count(".") < 1:
            continue
        own = name.split(".")[1]
        for imported in imports_of(path, root):
            parts = imported.split(".")
            if parts[0] == "services" and len(parts) > 1 and parts[1] in SERVICES \
                    and parts[1] != own:
                wrong.append(f"{name} imports {imported}")
    return wrong


def test_no_service_imports_another_service() -> None:
    wrong = cross_service_imports()
    assert not wrong, "\n".join(wrong)
def test_shared_imports_no_service_and_nothing_imports_tools() -> None:
    wrong = []
    for path in python_files("shared", "services"):
        name = module_name(path)
        for imported in imports_of(path):
            top = imported.split(".")[0]
            if top == "tools" or (name.startswith("shared") and top == "services"):
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_domain_modules_import_no_io_and_read_no_clock() -> None:
    domain = [p for p in python_files("shared", "services") if is_domain(module_name(p))]
    assert len(domain) >= 5, "the domain modules were not found where the rule looks"
    wrong = []
    for path in domain:
        name = module_name(path)
        for imported in imports_of(path):
            top = imported.split(".")[0]
            if top in IO_MODULES:
                wrong.append(f"{name} imports {imported} (I/O)")
            elif top in ("shared", "services") and imported not in ("shared", "services") and not (
                    is_domain(imported) or any(imported == m or imported.startswith(m + ".")
                                               for m in PURE_PROJECT_MODULES)):
                wrong.append(f"{name} imports {imported} (an adapter)")
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and (node.func.value.id, node.func.attr) in CLOCK_READS):
                wrong.append(f"{name}:{node.lineno} reads the clock "
                             f"({node.func.value.id}.{node.func.attr}())")
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_what_it_forbids(tmp_path: Path) -> None:
    """The check finds a service importing another when there is one (it is not vacuous)."""
    notifier = tmp_path / "services" / "notifications"
    notifier.mkdir(parents=True)
    (notifier / "domain.py").write_text("from services.flow.store import FlowStore\n"
                                       "from ..flow import api\nfrom shared import events\n")
    assert sorted(cross_service_imports(tmp_path)) == [
        "services.notifications.domain imports services.flow",
        "services.notifications.domain imports services.flow.api",
        "services.notifications.domain imports services.flow.store",
        "services.notifications.domain imports services.flow.store.FlowStore",
    ]
    assert is_domain("services.billing.domain.pricing") and is_domain("shared.floor.model")
    assert not is_domain("services.billing.store")
