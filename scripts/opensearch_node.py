"""A real OpenSearch node with the k-NN plugin, assembled from Maven Central, for tests and for
users without Docker: ``make opensearch`` / ``make opensearch-stop``.

    python scripts/opensearch_node.py start [--port 9200] [--home .opensearch] [--nodes 3]
    python scripts/opensearch_node.py stop  [--home .opensearch]

What it does:
1. fetches the pinned artifacts with ``mvn dependency:copy`` (so they are cached in the usual
   Maven cache, ~/.m2) and checks each one's SHA-256 against the pins below;
2. assembles a node: OpenSearch's integration-test distribution (no bundled JDK, no plugins,
   the transport module only), the ``lang-painless`` module that k-NN extends (its jars from
   Maven Central, with a descriptor and the security policy of OpenSearch's own module), and
   the k-NN plugin zip;
3. starts it on 127.0.0.1 as an unprivileged user (OpenSearch refuses to run as root; one named
   ``opensearch`` is created when needed): single node, a 512 MB heap, its own data folder, disk
   thresholds off, no security plugin (the integ-test distribution has none);
4. waits for green and prints the URL, the version and the plugins; ``stop`` ends it.

The Maven zip of k-NN carries no native faiss/nmslib libraries, so the pure-Java ``lucene``
engine (the plugin's default, and Lookalike's) is the one that runs here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

VERSION = "2.19.1"
KNN_VERSION = "2.19.1.0"
ROOT = Path(__file__).resolve().parents[1]
# (group:artifact:version:packaging, file name, sha256): pinned, checked after every fetch.
ARTIFACTS = [
    ("org.opensearch.distribution.integ-test-zip:opensearch:2.19.1:zip", "opensearch-2.19.1.zip",
     "af7152d8b7f6f1cee09d47276b32b70479fe6dd8cdbb61213f84eb7f8098b261"),
    ("org.opensearch.plugin:opensearch-knn:2.19.1.0:zip", "opensearch-knn-2.19.1.0.zip",
     "eab8c9818865bc035212eab5068cdacae164baa09d4c152f49b736d6f6b0e85c"),
]
PAINLESS = [  # modules/lang-painless of the full distribution, from Maven Central
    ("org.opensearch.plugin:lang-painless:2.19.1", "lang-painless-2.19.1.jar",
     "3cf5e02efa40ff5b88e74e1ab66a0bc462de3509fab4a6a4ffe90b8d13777a9a"),
    ("org.opensearch.plugin:opensearch-scripting-painless-spi:2.19.1", "opensearch-scripting-painless-spi-2.19.1.jar",
     "c2598797a5f6f897ce7e8d05f593ff96de3fbc56c52f299d63cddcae41556dda"),
    ("org.antlr:antlr4-runtime:4.13.1", "antlr4-runtime-4.13.1.jar",
     "54665d2838cc66458343468efc539e454fc95b46a8a04b13c6ac43fc9be63505"),
    ("org.ow2.asm:asm:9.7", "asm-9.7.jar", "adf46d5e34940bdf148ecdd26a9ee8eea94496a72034ff7141066b3eea5c4e9d"),
    ("org.ow2.asm:asm-analysis:9.7", "asm-analysis-9.7.jar",
     "7bc6bcbc21379948a0c8c467fb0f864206e5b818f6bc0b546872f5c9f941556f"),
    ("org.ow2.asm:asm-commons:9.7", "asm-commons-9.7.jar",
     "389bc247958e049fc9a0408d398c92c6d370c18035120395d4cba1d9d9304b7a"),
    ("org.ow2.asm:asm-tree:9.7", "asm-tree-9.7.jar",
     "62f4b3bc436045c1acb5c3ba2d8ec556ec3369093d7f5d06c747eb04b56d52b1"),
    ("org.ow2.asm:asm-util:9.7", "asm-util-9.7.jar",
     "37a6414d36641973f1af104937c95d6d921b2ddb4d612c66c5a9f2b13fc14211"),
]
# As OpenSearch's modules/lang-painless declares itself (build.gradle, plugin-metadata).
PAINLESS_DESCRIPTOR = f"""description=An easy, safe and fast scripting language for OpenSearch
version={VERSION}
name=lang-painless
classname=org.opensearch.painless.PainlessPlugin
java.version=11
opensearch.version={VERSION}
extended.plugins=
has.native.controller=false
"""
PAINLESS_POLICY = """grant {
  // needed to generate runtime classes
  permission java.lang.RuntimePermission "createClassLoader";
  // needed to find the classloader to load allowlisted classes from
  permission java.lang.RuntimePermission "getClassLoader";
};
"""
USER = "opensearch"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(downloads: Path) -> None:
    downloads.mkdir(parents=True, exist_ok=True)
    for coordinates, name, sha in [*ARTIFACTS, *PAINLESS]:
        target = downloads / name
        group, artifact, version, *ext = coordinates.split(":")
        cached = (Path.home() / ".m2" / "repository" / group.replace(".", "/") / artifact / version /
                  f"{artifact}-{version}.{ext[0] if ext else 'jar'}")
        if not target.exists() and cached.exists():
            shutil.copy(cached, target)  # fetched before: no mvn start-up for it
        if not target.exists():
            done = subprocess.run(["mvn", "-B", "dependency:copy", f"-Dartifact={coordinates}",
                                   f"-DoutputDirectory={downloads}"], cwd=downloads, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"mvn could not fetch {coordinates}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
        actual = _sha256(target)
        if actual != sha:
            target.unlink()
            raise SystemExit(f"{name}: SHA-256 {actual} is not the pinned {sha}")


def assemble(home: Path) -> Path:
    downloads = home / "downloads"
    fetch(downloads)
    node = home / f"opensearch-{VERSION}"
    if (node / ".assembled").exists():
        return node
    shutil.rmtree(node, ignore_errors=True)
    with zipfile.ZipFile(downloads / ARTIFACTS[0][1]) as z:
        z.extractall(home)
    for script in (node / "bin").iterdir():
        script.chmod(0o755)
    painless = node / "modules" / "lang-painless"
    painless.mkdir(parents=True, exist_ok=True)
    for _, name, _ in PAINLESS:
        shutil.copy(downloads / name, painless / name)
    (painless / "plugin-descriptor.properties").write_text(PAINLESS_DESCRIPTOR)
    (painless / "plugin-security.policy").write_text(PAINLESS_POLICY)
    with zipfile.ZipFile(downloads / ARTIFACTS[1][1]) as z:
        z.extractall(node / "plugins" / "opensearch-knn")
    (node / ".assembled").write_text(VERSION)
    return node


def _java_home() -> str:
    for candidate in (os.environ.get("OPENSEARCH_JAVA_HOME"), os.environ.get("JAVA_HOME")):
        if candidate and Path(candidate, "bin", "java").exists():
            return candidate
    java = shutil.which("java")
    if not java:
        raise SystemExit("OpenSearch needs a Java 11-21 runtime (OpenJDK 17 is used here): none found")
    return str(Path(java).resolve().parents[1])


def _ensure_user() -> tuple[int, int] | None:
    """The unprivileged user to run as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def _get(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


def _node_config(home: Path, node: Path, n: int, nodes: int, port: int) -> Path:
    """Node n's own config folder (OPENSEARCH_PATH_CONF), data and logs under ``home/node-<n>``."""
    own = home / f"node-{n}"
    config = own / "config"
    config.mkdir(parents=True, exist_ok=True)
    for name in ("jvm.options", "log4j2.properties"):
        shutil.copy(node / "config" / name, config / name)
    (config / "jvm.options.d").mkdir(exist_ok=True)
    for folder in ("data", "logs"):
        (own / folder).mkdir(exist_ok=True)
    lines = ["cluster.name: lookalike-test", f"node.name: node-{n}", "network.host: 127.0.0.1",
             f"http.port: {port + n - 1}", f"transport.port: {port + 100 + n - 1}",
             f"path.data: {own / 'data'}", f"path.logs: {own / 'logs'}",
             "cluster.routing.allocation.disk.threshold_enabled: false"]
    if nodes == 1:
        lines.append("discovery.type: single-node")
    else:
        seeds = ", ".join(f'"127.0.0.1:{port + 100 + i}"' for i in range(nodes))
        managers = ", ".join(f'"node-{i + 1}"' for i in range(nodes))
        lines += [f"discovery.seed_hosts: [{seeds}]", f"cluster.initial_cluster_manager_nodes: [{managers}]"]
    (config / "opensearch.yml").write_text("\n".join(lines) + "\n")
    return own


def start_node(home: Path, n: int, nodes: int, port: int, heap: str) -> subprocess.Popen[bytes]:
    """Start node n of ``nodes`` (1-based) and return at once; ``start`` waits for the cluster."""
    home = home.resolve()
    node = assemble(home)
    own = _node_config(home, node, n, nodes, port)
    owner = _ensure_user()
    if owner is not None:
        for path in [home, *(p for p in home.rglob("*") if "downloads" not in p.parts)]:
            os.chown(path, *owner, follow_symlinks=False)
    env = {**os.environ, "OPENSEARCH_JAVA_HOME": _java_home(), "OPENSEARCH_JAVA_OPTS": f"-Xms{heap} -Xmx{heap}",
           "OPENSEARCH_PATH_CONF": str(own / "config")}
    log = (own / "logs" / "console.log").open("ab")
    # cwd: jvm.options' relative paths (GC log, heap dumps) land in the node's own folder.
    proc = subprocess.Popen([str(node / "bin" / "opensearch")], cwd=own, env=env, stdout=log, stderr=log,
                            user=owner[0] if owner else None, group=owner[1] if owner else None,
                            start_new_session=True)
    (home / f"node-{n}.pid").write_text(str(proc.pid))
    return proc


def wait_green(url: str, wait_s: float, nodes: int = 1) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            health = _get(f"{url}/_cluster/health?wait_for_status=green&timeout=1s")
            if health["status"] == "green" and health["number_of_nodes"] >= nodes:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not reach green with {nodes} nodes within {wait_s:.0f} s")


def start(home: Path, port: int, heap: str, wait_s: float, nodes: int = 1) -> list[str]:
    """Start a cluster of ``nodes`` on ports ``port``...; returns their URLs once it is green."""
    home = home.resolve()
    procs = [start_node(home, n, nodes, port, heap) for n in range(1, nodes + 1)]
    urls = [f"http://127.0.0.1:{port + i}" for i in range(nodes)]
    try:
        wait_green(urls[0], wait_s, nodes)
    except TimeoutError as exc:
        dead = [n + 1 for n, p in enumerate(procs) if p.poll() is not None]
        stop(home)
        tail = (home / "node-1" / "logs" / "console.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{exc} (exited: nodes {dead or 'none'}):\n{tail}") from None
    info = _get(urls[0])
    lines = urllib.request.urlopen(f"{urls[0]}/_cat/plugins?h=component,version", timeout=5).read()  # noqa: S310
    plugins = ", ".join(dict.fromkeys(line.strip() for line in lines.decode().splitlines() if line.strip()))
    print(f"OpenSearch {info['version']['number']} with {plugins} at {', '.join(urls)}")
    return urls


def stop_node(home: Path, n: int, sig: int = signal.SIGTERM) -> None:
    pid_file = home.resolve() / f"node-{n}.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, sig)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            os.killpg(pid, 0)
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


def stop(home: Path) -> None:
    for pid_file in sorted(home.resolve().glob("node-*.pid")):
        stop_node(home, int(pid_file.stem.split("-")[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--home", type=Path, default=ROOT / ".opensearch")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--heap", default="512m")
    parser.add_argument("--wait", type=float, default=180.0, help="seconds to wait for green")
    parser.add_argument("--nodes", type=int, default=1, help="a cluster of this many nodes on consecutive ports")
    parser.add_argument("--fresh", action="store_true", help="start with empty data folders")
    args = parser.parse_args()
    if args.command == "stop":
        stop(args.home)
        return
    if args.fresh:
        for folder in args.home.glob("node-*/data"):
            shutil.rmtree(folder, ignore_errors=True)
    start(args.home, args.port, args.heap, args.wait, args.nodes)


if __name__ == "__main__":
    sys.exit(main())
