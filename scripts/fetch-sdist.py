#!/usr/bin/env python3
"""Downloads a project's source distribution from PyPI through pip's own HTTP client (the
package registry, as pip reaches it: its proxy and certificate settings apply) and checks it
against the index's sha256. `pip download --no-binary` would also build the package's metadata,
which for CuPy needs a CUDA build environment; the tests in the sdist need no build.

    fetch-sdist.py PROJECT VERSION DEST_FILE
"""
import hashlib
import sys

from pip._internal.network.session import PipSession


def main():
    project, version, dest = sys.argv[1:4]
    s = PipSession()
    r = s.get(f"https://pypi.org/simple/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    r.raise_for_status()
    name = f"{project}-{version}.tar.gz"
    files = [f for f in r.json()["files"] if f["filename"] == name]
    if not files:
        sys.exit(f"fetch-sdist: {name} is not on PyPI")
    f = files[0]
    data = s.get(f["url"]).content
    want = f["hashes"]["sha256"]
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        sys.exit(f"fetch-sdist: {name}: sha256 {got}, the index says {want}")
    with open(dest, "wb") as out:
        out.write(data)
    print(f"fetch-sdist: {name} ({len(data)} bytes, sha256 checked)")


if __name__ == "__main__":
    main()
