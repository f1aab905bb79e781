"""The host's pip settings for an image build, never for the image (docker/build.sh).

Reads `pip config list` on stdin and writes, into FOLDER:
  pip.conf  the effective settings (files, then PIP_* variables), given to the build as the
            secret `pipconf`; a CA bundle (`cert`) is copied to ca.crt (the secret `pipca`)
  serve/    a link to each local folder or file the settings name (find-links, file:// indexes,
            constraints), numbered; build.sh serves this folder on the host's loopback at URL
            for the build's RUN steps (host network), and pip.conf names them by that URL. So
            nothing is mounted into the image's file system: no mount point is left in a layer.

    pip config list | python pipconf.py FOLDER URL        # URL: http://127.0.0.1:PORT
"""

import ast
import configparser
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

LOCAL_KEYS = {"find-links", "index-url", "extra-index-url", "constraint", "requirement"}
SKIP_KEYS = {"config-file"}


def read(lines):
    """{section: {key: value}}, PIP_* variables (':env:') last so that they win, as in pip."""
    files, env = {}, {}
    for line in lines:
        name, sep, value = line.strip().partition("=")
        if not sep or "." not in name:
            continue
        section, key = name.rsplit(".", 1)
        value = ast.literal_eval(value)
        if section == ":env:":
            env[key] = value
        else:
            files.setdefault(section, {})[key] = value
    files.setdefault("global", {}).update(env)
    return files


def local_path(item):
    """The local path an item names (a plain path or a file:// URL), or None."""
    url = urlparse(item)
    if url.scheme == "file":
        return url.path
    if not url.scheme and item.startswith("/"):
        return item
    return None


class Served:
    """Local paths served under FOLDER/serve/N, named by URL/N."""

    def __init__(self, folder, url):
        self.folder, self.url, self.links = Path(folder) / "serve", url.rstrip("/"), {}
        self.folder.mkdir(exist_ok=True)

    def __call__(self, key, path):
        path = Path(path)
        # a file:// index's pages (.../simple/NAME/) usually link to files beside the index
        # (../../files/): serve its parent and name .../simple under it
        tail = ""
        if key.endswith("index-url") and path.name == "simple":
            path, tail = path.parent, "/simple"
        if path not in self.links:
            self.links[path] = str(len(self.links) + 1)
            os.symlink(path, self.folder / self.links[path])
        slash = "/" if path.is_dir() and not tail else ""
        return f"{self.url}/{self.links[path]}{tail}{slash}"


def main(folder, url):
    settings = read(sys.stdin)
    serve = Served(folder, url)
    conf = configparser.ConfigParser(interpolation=None)
    for section, values in settings.items():
        conf[section] = {}
        for key, value in values.items():
            if key in SKIP_KEYS:
                continue
            if key == "cert":
                shutil.copyfile(value, Path(folder) / "ca.crt")
                value = "/run/secrets/pipca"
            elif key in LOCAL_KEYS:
                items = []
                for item in value.split():
                    path = local_path(item)
                    if path is not None and not Path(path).exists():
                        continue
                    items.append(item if path is None else serve(key, path))
                if not items:
                    continue
                value = " ".join(items)
            conf[section][key] = value
    if serve.links:
        host = urlparse(url).netloc
        trusted = conf["global"].get("trusted-host", "").split()
        conf["global"]["trusted-host"] = " ".join([*trusted, host])
    with open(Path(folder) / "pip.conf", "w", encoding="utf-8") as out:
        conf.write(out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
