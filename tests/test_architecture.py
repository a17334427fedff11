"""The import direction of docs/architecture.md, read from every module's syntax tree.

The core (mea_control but its two faces, the CLI and the GUI) does not import drivers,
hardware_sim or protocols; drivers do not import the engine; the protocol side (the
scripting API, its context, the trial and response helpers) does not import the engine,
which imports it; hardware_sim imports from drivers only the wire codec; the sinks
(recording/, lsl.py, the GUI's live feed) do not import the engine. Imports inside
functions and under ``if TYPE_CHECKING:`` count too.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACES = ("cli", "gui")  # the two faces: the CLI package and the GUI


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of everything the file imports; ``from a import b`` gives
    ``a.b`` (b may be a module), relative imports resolved."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + [node.module or ""]).strip(".")
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(files: list[Path], forbidden: tuple[str, ...], allowed: tuple[str, ...] = (),
               root: Path = ROOT) -> list[str]:
    """``file:line imports name`` for every import of a forbidden package (but not of
    an allowed part of it)."""
    return [f"{path.relative_to(root)}:{line} imports {name}"
            for path in files for line, name in imports(path, root)
            if any(within(name, f) for f in forbidden)
            and not any(within(name, a) for a in allowed)]


def core(root: Path = ROOT) -> list[Path]:
    package = root / "mea_control"
    return [p for p in sorted(package.rglob("*.py"))
            if p.relative_to(package).parts[0] not in FACES]


def package(name: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / name).rglob("*.py"))


def test_the_core_imports_no_driver_simulator_or_protocol():
    files = core()
    assert ROOT / "mea_control" / "engine.py" in files
    assert ROOT / "mea_control" / "recording" / "writer.py" in files
    assert not any("gui" in p.parts for p in files)
    assert violations(files, ("drivers", "hardware_sim", "protocols")) == []


def test_drivers_do_not_import_the_engine():
    assert violations(package("drivers"), ("mea_control.engine",)) == []


def test_the_recording_side_lsl_and_the_live_feed_do_not_import_the_engine():
    """Sinks know a run by what they are handed (mea_control.sinks), never the engine."""
    files = package("mea_control/recording") + [ROOT / "mea_control" / "lsl.py",
                                                 ROOT / "mea_control" / "gui" / "feed.py"]
    assert ROOT / "mea_control" / "recording" / "switch.py" in files
    assert violations(files, ("mea_control.engine",)) == []


def test_the_protocol_side_does_not_import_the_engine():
    """protocol.py, context.py, trials.py and responses.py reach the loop only through the
    context's Loop port, which the engine implements: the engine imports them, never the
    reverse."""
    files = [ROOT / "mea_control" / f"{name}.py"
             for name in ("protocol", "context", "trials", "responses")]
    assert all(p.exists() for p in files)
    assert violations(files, ("mea_control.engine",)) == []


def test_the_simulator_imports_only_the_wire_codec_from_drivers():
    assert violations(package("hardware_sim"), ("drivers",), allowed=("drivers.wire",)) == []


def test_the_check_finds_every_form_of_a_forbidden_import(tmp_path):
    """The check itself can fail: plain, from and function-level imports; relative imports
    resolve within their package."""
    (tmp_path / "mea_control" / "gui").mkdir(parents=True)
    (tmp_path / "mea_control" / "recording").mkdir()
    (tmp_path / "drivers").mkdir()
    files = {
        "mea_control/engine.py": "import numpy\nimport drivers.sim\n",
        "mea_control/recording/writer.py": "def later():\n    from hardware_sim import culture\n",
        "mea_control/recording/reader.py": "from .. import types\nfrom .tables import x\n",
        "mea_control/gui/session.py": "from drivers import sim\n",  # a face: allowed
        "drivers/sim.py": "from drivers import wire\nfrom mea_control.engine import Engine\n",
        "drivers/serial_mea.py": "from . import wire\nfrom mea_control import engine\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert violations(core(tmp_path), ("drivers", "hardware_sim", "protocols"),
                      root=tmp_path) == [
        "mea_control/engine.py:2 imports drivers.sim",
        "mea_control/recording/writer.py:2 imports hardware_sim.culture",
    ]
    assert violations(package("drivers", tmp_path), ("mea_control.engine",), root=tmp_path) == [
        "drivers/serial_mea.py:2 imports mea_control.engine",
        "drivers/sim.py:2 imports mea_control.engine.Engine",
    ]
    assert violations(package("drivers", tmp_path), ("drivers",), allowed=("drivers.wire",),
                      root=tmp_path) == []  # `from . import wire` is drivers.wire
    assert [name for _, name in imports(tmp_path / "mea_control/recording/reader.py",
                                        tmp_path)] == ["mea_control.types",
                                                       "mea_control.recording.tables.x"]
