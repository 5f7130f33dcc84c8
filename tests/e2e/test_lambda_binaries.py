"""Every binary in the `sam build` output loads on the Lambda runtime the template declares.

Lambda's ``python3.11`` runs on Amazon Linux 2 (glibc 2.26), ``python3.12`` and later on Amazon
Linux 2023 (glibc 2.34) (AWS docs, "Lambda runtimes"). A shared object that needs a newer glibc
symbol version fails at import there (``Runtime.ImportModuleError``), though it loads on the
build host. So this reads, without loading anything: each ELF file's architecture and the glibc
versions it needs, each installed wheel's tags, and each ``.pyc``'s magic number, against the
runtime and architecture the template declares. A failure names the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
from packaging import tags

from lookalike.gateway import load_template
from tests.e2e.lambda_stand_in import BUILD

pytestmark = pytest.mark.skipif(not (BUILD / "template.yaml").is_file(),
                                reason="needs the `sam build` output in .aws-sam/build: run `make sam-build`")

#: glibc of each runtime's Amazon Linux (AWS docs, "Lambda runtimes"), and its CPython version.
RUNTIMES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "python3.11": ((2, 26), (3, 11)),
    "python3.12": ((2, 34), (3, 12)),
    "python3.13": ((2, 34), (3, 13)),
}
ELF_MACHINE = {"x86_64": "EM_X86_64", "arm64": "EM_AARCH64"}
WHEEL_ARCH = {"x86_64": "x86_64", "arm64": "aarch64"}
#: The .pyc magic number of each CPython (importlib.util.MAGIC_NUMBER on that version).
PYC_MAGIC = {(3, 11): 3495, (3, 12): 3531, (3, 13): 3571}


def _runtime() -> tuple[str, str]:
    functions = load_template(BUILD / "template.yaml")["Globals"]["Function"]
    return functions["Runtime"], functions["Architectures"][0]


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _glibc_needed(elf: Any) -> tuple[int, int]:
    """The newest GLIBC_x.y symbol version the file's version-needs section names."""
    newest = (0, 0)
    for section in elf.iter_sections():
        if isinstance(section, GNUVerNeedSection):
            for _, auxiliaries in section.iter_versions():
                for aux in auxiliaries:
                    match = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", aux.name)
                    if match:
                        newest = max(newest, (int(match[1]), int(match[2])))
    return newest


def _supported_tags(python: tuple[int, int], glibc: tuple[int, int], arch: str) -> set[tags.Tag]:
    """The wheel tags pip would accept on the runtime: manylinux up to its glibc, its CPython."""
    platforms = [f"manylinux_{glibc[0]}_{minor}_{arch}" for minor in range(glibc[1], 4, -1)]
    legacy = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
    platforms += [f"{name}_{arch}" for version, name in legacy.items() if version <= glibc]
    supported = set(tags.cpython_tags(python, platforms=platforms))
    supported |= set(tags.compatible_tags(python, f"cp{python[0]}{python[1]}", platforms=platforms))
    return supported


def test_every_shared_object_loads_on_the_declared_runtime() -> None:
    runtime, architecture = _runtime()
    assert runtime in RUNTIMES, f"unknown Lambda runtime {runtime}: add its glibc to RUNTIMES"
    glibc, python = RUNTIMES[runtime]
    machine = ELF_MACHINE[architecture]
    checked, failures = 0, []
    for path in sorted(BUILD.rglob("*")):
        if not path.is_file() or path.is_symlink() or not _is_elf(path):
            continue
        checked += 1
        with path.open("rb") as f:
            elf = ELFFile(f)
            if elf["e_machine"] != machine:
                failures.append(f"{path.relative_to(BUILD)}: built for {elf['e_machine']}, "
                                f"the functions run on {machine}")
            needed = _glibc_needed(elf)
        if needed > glibc:
            failures.append(f"{path.relative_to(BUILD)}: needs GLIBC_{needed[0]}.{needed[1]}, "
                            f"{runtime} has glibc {glibc[0]}.{glibc[1]}")
        suffix = re.search(r"\.cpython-(\d)(\d+)-", path.name)
        if suffix and (int(suffix[1]), int(suffix[2])) != python:
            failures.append(f"{path.relative_to(BUILD)}: an extension for CPython {suffix[1]}.{suffix[2]}, "
                            f"{runtime} is {python[0]}.{python[1]}")
    assert checked > 10, f"only {checked} shared objects in {BUILD}: is the build complete?"
    assert not failures, "\n".join(failures)


def test_every_installed_wheel_is_tagged_for_the_declared_runtime() -> None:
    runtime, architecture = _runtime()
    glibc, python = RUNTIMES[runtime]
    supported = _supported_tags(python, glibc, WHEEL_ARCH[architecture])
    wheels, failures = 0, []
    for wheel in sorted(BUILD.glob("*/python/*.dist-info/WHEEL")):
        wheels += 1
        declared = [line.split(":", 1)[1].strip() for line in wheel.read_text().splitlines()
                    if line.startswith("Tag:")]
        if not any(tag in supported for text in declared for tag in tags.parse_tag(text)):
            failures.append(f"{wheel.parent.relative_to(BUILD)}: tagged {', '.join(declared)}, "
                            f"none of which {runtime} on {architecture} accepts")
    assert wheels > 10, f"only {wheels} wheels found in the layers: is the build complete?"
    assert not failures, "\n".join(failures)


def test_the_bytecode_is_for_the_declared_python() -> None:
    runtime, _ = _runtime()
    _, python = RUNTIMES[runtime]
    magic = PYC_MAGIC[python].to_bytes(2, "little") + b"\r\n"
    compiled, failures = 0, []
    for path in sorted(BUILD.rglob("*.pyc")):
        compiled += 1
        with path.open("rb") as f:
            if f.read(4) != magic:
                failures.append(f"{path.relative_to(BUILD)}: bytecode for another Python than {runtime}")
    assert compiled > 100, f"only {compiled} .pyc files in {BUILD}: the layers ship bytecode (Makefile, bytecode)"
    more = f"\n... and {len(failures) - 20} more" if len(failures) > 20 else ""
    assert not failures, "\n".join(failures[:20]) + more
