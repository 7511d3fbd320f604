"""A PEP 517 build backend in the standard library only, so `pip install ./python` needs nothing
from a package index: the wheel is the svdiff/ package (pure Python, py3-none-any) plus its
dist-info; the sdist is this folder. pyproject.toml's [project] table gives the name and version."""
import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "svdiff"


def _project():
    """name, version, summary and requires-python from pyproject.toml's [project] table."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    table = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S).group(1)
    def key(k):
        m = re.search(r'^%s\s*=\s*"([^"]*)"' % re.escape(k), table, re.M)
        return m.group(1) if m else None
    return key("name"), key("version"), key("description"), key("requires-python")


def _metadata():
    name, version, summary, python = _project()
    lines = ["Metadata-Version: 2.1", "Name: " + name, "Version: " + version, "Summary: " + summary]
    if python:
        lines.append("Requires-Python: " + python)
    lines.append("Provides-Extra: numpy")
    lines.append('Requires-Dist: numpy ; extra == "numpy"')
    readme = os.path.join(ROOT, "README.md")
    body = ""
    if os.path.isfile(readme):
        lines.append("Description-Content-Type: text/markdown")
        with open(readme, encoding="utf-8") as f:
            body = f.read()
    return ("\n".join(lines) + "\n\n" + body).encode("utf-8")


def _package_files():
    """(path in the wheel, bytes) of every file of the package, sorted (reproducible wheels)."""
    out = []
    base = os.path.join(ROOT, PACKAGE)
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(folder, f)
            with open(full, "rb") as fh:
                out.append((os.path.relpath(full, ROOT).replace(os.sep, "/"), fh.read()))
    return out


def _write_wheel(wheel_directory, files):
    name, version, _, _ = _project()
    dist = "%s-%s.dist-info" % (name, version)
    files = list(files) + [
        (dist + "/METADATA", _metadata()),
        (dist + "/WHEEL", b"Wheel-Version: 1.0\nGenerator: svdiff_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    ]
    record = []
    for path, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, digest, len(data)))
    record.append(dist + "/RECORD,,")
    files.append((dist + "/RECORD", ("\n".join(record) + "\n").encode()))
    wheel = "%s-%s-py3-none-any.whl" % (name, version)
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files:
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return wheel


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory, _package_files())


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    """`pip install -e ./python`: a .pth file that puts this folder on sys.path."""
    return _write_wheel(wheel_directory, [("svdiff_editable.pth", (ROOT + "\n").encode())])


def build_sdist(sdist_directory, config_settings=None):
    name, version, _, _ = _project()
    base = "%s-%s" % (name, version)
    out = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, out), "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "tests", "build") and not d.endswith(".egg-info"))
            for f in sorted(files):
                if f.endswith((".pyc", ".pyo")):
                    continue
                full = os.path.join(folder, f)
                rel = os.path.relpath(full, ROOT)
                with open(full, "rb") as fh:
                    data = fh.read()
                info = tarfile.TarInfo(base + "/" + rel.replace(os.sep, "/"))
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    return out
