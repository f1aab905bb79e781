"""What an exported image must not hold: the host's name, resolver or pip settings, pip's cache,
build secrets, ldpo's tests or data. Reads a docker-archive (bash docker/build.sh --archive FILE):
the image config (environment, labels, every layer's command) and every file of every layer.

    python3 docker/hygiene.py out/ldpo-image.tar

Prints what it looked for and one line per finding; exit 0 when there is none, 1 otherwise.
"""

import json
import re
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

# paths no layer may hold (a layer's whiteouts, .wh.*, are deletions and never count)
BAD_PATHS = re.compile(
    r"(^|/)(pip\.conf|pip\.ini)$|^etc/xdg/pip(/|$)|(^|/)\.cache/pip(/|$)|^root/\.cache(/|$)"
    r"|^home/[^/]+/\.cache(/|$)|^src/ldpo/(tests|out|docs|\.git|\.venv)(/|$)|^run/secrets/."
    r"|^tmp/.|^var/lib/apt/lists/.+_(Packages|Release|InRelease)"
)
SERVED_URL = re.compile(rb"https?://127\.0\.0\.1:\d+/\d+/")  # build.sh's loopback server
TEXT_LIMIT = 4 << 20


def host_strings() -> list[bytes]:
    """The host's name, its resolvers and the local paths and index URLs its pip settings name."""
    found = set()
    name = socket.gethostname()
    if len(name) >= 4:  # a two-letter name ("vm") matches everywhere; /etc/hostname is checked instead
        found.add(name)
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            if line.startswith("nameserver"):
                found.add(line.split()[1])
    except OSError:
        pass
    try:
        conf = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    except OSError:
        conf = ""
    for line in conf.splitlines():
        key, _, value = line.partition("=")
        if key.rsplit(".", 1)[-1] in {"find-links", "index-url", "extra-index-url", "constraint", "cert", "proxy"}:
            for item in value.strip("'\"").split():
                item = item.removeprefix("file://")
                item = item.rstrip("/")
                if item and item not in {"/etc/ssl/certs/ca-certificates.crt", "https://pypi.org/simple"}:
                    found.add(item.removesuffix("/simple"))  # an index's folder, files beside it too
    return sorted(s.encode() for s in found if s)


def scan(archive: str) -> int:
    needles = host_strings()
    print(f"hygiene: looking for {len(needles)} host strings: {b', '.join(needles).decode()}")
    host_paths = [n.decode().lstrip("/") for n in needles if n.startswith(b"/")]
    findings = []
    layers = 0
    files = 0
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))[0]
        config = outer.extractfile(manifest["Config"]).read()
        for needle in needles:
            if needle in config:
                findings.append(f"image config: holds {needle.decode()}")
        cfg = json.loads(config)
        for var in cfg["config"].get("Env", []):
            if re.match(r"(PIP_|https?_proxy|HTTPS?_PROXY|no_proxy)", var):
                findings.append(f"image config: environment {var}")
        history = [h.get("created_by", "") for h in cfg.get("history", [])]
        for layer_name in manifest["Layers"]:
            layers += 1
            with tarfile.open(fileobj=outer.extractfile(layer_name), mode="r|*") as layer:
                for member in layer:
                    path = member.name.lstrip("./")
                    if Path(path).name.startswith(".wh."):
                        continue
                    files += 1
                    if BAD_PATHS.search(path) and not member.isdir():
                        findings.append(f"{layer_name}: {path}")
                    elif BAD_PATHS.search(path) and member.isdir():
                        findings.append(f"{layer_name}: {path}/ (a folder)")
                    for needle in host_paths:
                        if path == needle or path.startswith(needle + "/"):
                            findings.append(f"{layer_name}: {path} (a host path of pip's settings)")
                    if path == "etc/hostname" and member.size:
                        findings.append(f"{layer_name}: etc/hostname is not empty")
                    if not member.isfile() or member.size > TEXT_LIMIT or ".so" in Path(path).name:
                        continue
                    data = layer.extractfile(member).read()
                    if b"\0" in data[:8192]:
                        continue
                    for needle in needles:
                        if needle in data:
                            findings.append(f"{layer_name}: {path} holds {needle.decode()}")
                    if ".dist-info/" in path and SERVED_URL.search(data):
                        findings.append(f"{layer_name}: {path} names the build's loopback server")
    print(f"hygiene: {layers} layers, {files} files, {len(history)} history entries")
    for finding in findings:
        print(f"hygiene: FOUND {finding}")
    print(f"hygiene: {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(scan(sys.argv[1]))
