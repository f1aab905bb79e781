"""Print the image's requirements: pyproject.toml's build requirements, setup.cfg's
install_requires and the extra named, one per line (docker/Dockerfile's dependency layer).

    python requirements.py FOLDER EXTRA      # FOLDER holds setup.cfg and pyproject.toml
"""

import configparser
import sys
import tomllib
from pathlib import Path


def lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def main(folder: str, extra: str) -> int:
    setup = configparser.ConfigParser()
    setup.read(Path(folder) / "setup.cfg", encoding="utf-8")
    extras = setup["options.extras_require"]
    if extra not in extras:
        print(f"requirements.py: EXTRA={extra!r} is not an extra of setup.cfg ({', '.join(extras)})", file=sys.stderr)
        return 2
    build = tomllib.loads((Path(folder) / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]["requires"]
    print("\n".join([*build, *lines(setup["options"]["install_requires"]), *lines(extras[extra])]))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
