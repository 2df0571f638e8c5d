"""Exposure: who can reach the app, which files the dashboard touches, and how checkpoints are read.

- The app listens on this machine only unless told otherwise: `.streamlit/config.toml` says
  `localhost`, the README says so and how to share on a LAN, and a real `streamlit run app.py`
  (no address flag) has its listening socket on a loopback address only.
- Every page, driven through a session (a launch, a map computed, a picture uploaded and searched)
  and fed a `?run=../elsewhere/...` link, opens, lists, creates, renames and deletes files only in
  the runs folder, the run's data folder and the cache (a Python audit hook records every such
  call of the process, background threads included); a look-alike run beside the runs folder, the
  project's own checkpoints/ and .cache/ are never touched.
- No code in the repository unpickles a checkpoint unsafely: every `torch.load` passes
  `weights_only=True` and nothing calls pickle's loaders on data from outside (an AST scan).
"""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
import socket
import sys
import tomllib
from pathlib import Path
from typing import Iterator

from browser import StreamlitServer
from byol import retrieval, runs
from helpers import write_image_folder
from test_page_embeddings import compute_map, run_until
from test_page_retrieval import png_bytes, shown
from test_retrieval import install_fake_umap

ROOT = Path(__file__).resolve().parent.parent


# --- listening address ---------------------------------------------------------------------------
def test_the_config_and_the_readme_say_localhost_and_how_to_share_on_a_lan():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    readme = (ROOT / "README.md").read_text()
    assert "The app listens on `localhost` only" in readme
    assert "streamlit run app.py --server.address 0.0.0.0" in readme  # how to share it on a LAN


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on `port` (from /proc/net/tcp and tcp6), as hex."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                local, _, state = line.split()[1:4]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                    found.append(address)
    return found


def is_loopback(hex_address: str) -> bool:
    if len(hex_address) == 8:  # IPv4, little-endian: 0100007F = 127.0.0.1
        return bytes.fromhex(hex_address)[::-1][0] == 127
    return hex_address == "00000000000000000000000001000000"  # ::1


def other_addresses() -> set[str]:
    """This machine's IPv4 addresses that are not loopback (the way a LAN would reach it)."""
    addresses = set()
    with contextlib.suppress(OSError):
        addresses |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        addresses.add(probe.getsockname()[0])
    return {a for a in addresses if not a.startswith("127.")}


def test_the_running_app_listens_on_loopback_only(tmp_path, session_cache_dir):
    # No address flag: the server listens where the project's .streamlit/config.toml says.
    with StreamlitServer(tmp_path / "runs", session_cache_dir, tmp_path / "server.log", address=None) as server:
        addresses = listening_addresses(server.port)
        assert addresses and all(is_loopback(a) for a in addresses), addresses
        for address in other_addresses():  # from the LAN's side the port is closed
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
                client.settimeout(5)
                assert client.connect_ex((address, server.port)) != 0, f"the app answers on {address}"


# --- files the dashboard touches -------------------------------------------------------------------
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_WRITE_EVENTS = {
    "os.remove",
    "os.rmdir",
    "os.mkdir",
    "shutil.rmtree",
    "os.truncate",
    "os.chmod",
    "os.utime",
    "os.symlink",
    "os.link",
}


class FileAccess:
    """Every path the process reads (open, listdir, scandir) or changes while `recording()` is on.

    A Python audit hook cannot be removed once added, so one instance is hooked in for the whole
    process and does nothing while it is not recording.
    """

    def __init__(self) -> None:
        self.on = False
        self.reads: set[Path] = set()
        self.writes: set[Path] = set()
        sys.addaudithook(self._hook)

    @contextlib.contextmanager
    def recording(self) -> Iterator["FileAccess"]:
        self.reads.clear()
        self.writes.clear()
        self.on = True
        try:
            yield self
        finally:
            self.on = False

    def _hook(self, event: str, args: tuple) -> None:
        if not self.on:
            return
        try:
            if event == "open":
                path, _mode, flags = args
                target = self.writes if isinstance(flags, int) and flags & _WRITE_FLAGS else self.reads
                self._add(target, path)
            elif event in ("os.listdir", "os.scandir"):
                self._add(self.reads, args[0] if args else ".")
            elif event == "os.rename":
                self._add(self.writes, args[0])
                self._add(self.writes, args[1])
            elif event in _WRITE_EVENTS:
                self._add(self.writes, args[0])
        except Exception:  # noqa: BLE001 - a recorder must never break the code it watches
            pass

    @staticmethod
    def _add(target: set[Path], path: object) -> None:
        if path is None or isinstance(path, int):  # a file descriptor: its path was recorded when opened
            return
        target.add(Path(os.path.abspath(os.fsdecode(os.fspath(path)))))


_access: list[FileAccess] = []


def file_access() -> FileAccess:
    """The process's one recorder, hooked in on first use (not at import: no cost to other tests)."""
    if not _access:
        _access.append(FileAccess())
    return _access[0]


def inside(path: Path, *folders: Path) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def test_the_pages_touch_only_the_runs_folder_the_data_folder_and_the_cache(
    finished_run, runs_dir, tmp_path, app_test, fake_train, monkeypatch, session_cache_dir
):
    data_dir = write_image_folder(tmp_path / "data", train_per_class=20, test_per_class=8)
    runs.update_config(finished_run, runs.read_config(finished_run).replace(data=str(data_dir)))
    bait = tmp_path / "elsewhere"
    shutil.copytree(finished_run, bait / "bait-run")  # a run the user did not point the app at
    install_fake_umap(monkeypatch)
    retrieval.clear_caches()
    fake_train.auto_release = True
    escape = {"run": "../elsewhere/bait-run"}
    run = {"run": finished_run.name}

    with file_access().recording() as access:
        for page in ("app.py", "pages/1_Train.py", "pages/2_Compare.py", "pages/3_Embeddings.py", "pages/4_Retrieval.py"):
            at = app_test(page, escape).run()  # a link that tries to leave the runs folder
            assert not at.exception, (page, at.exception)
        train = app_test("pages/1_Train.py").run()
        if not train.button(key="launch").disabled:
            train.button(key="launch").click().run()  # a new run, trained by the fake
            assert not train.exception
        embeddings = app_test("pages/3_Embeddings.py", run)
        compute_map(embeddings)
        search = app_test("pages/4_Retrieval.py", run).run()  # computes its search bank by itself, if the map has not
        run_until(search, lambda at: len(shown(at)) > 0)
        search.file_uploader[0].set_value(("red.png", png_bytes(), "image/png"))
        search.run()
        assert not search.exception and not search.error

    assert (finished_run / "embeddings").is_dir()  # the pages did their work, so the record means something
    assert any(inside(p, data_dir) for p in access.reads)
    changed_elsewhere = sorted(p for p in access.writes if not inside(p, runs_dir, session_cache_dir))
    assert changed_elsewhere == [], changed_elsewhere
    unchosen = (bait, ROOT / "checkpoints", ROOT / ".cache")
    assert sorted(p for p in access.reads | access.writes if inside(p, *unchosen)) == []
    playground = sorted(p for p in access.reads if inside(p, tmp_path) and not inside(p, runs_dir, data_dir))
    assert playground == [], playground


# --- unpickling ---------------------------------------------------------------------------------------
def unsafe_loads(source: str, explicit: bool = True) -> list[str]:
    """Calls in `source` that could unpickle untrusted bytes, as "line N: what".

    With `explicit`, a `torch.load` must say `weights_only=True` itself; without, only one that
    says `weights_only=False` is flagged (the pinned torch defaults to True, unless the environment
    variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns that default off: hence `explicit` for code
    that ships).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name.endswith("torch.load") or name == "load" and "weights_only" in keywords:
            flag = keywords.get("weights_only")
            if explicit and not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"line {node.lineno}: {name} without weights_only=True")
            elif not explicit and flag is not None and not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"line {node.lineno}: {name} with weights_only={ast.unparse(flag)}")
        elif name in (
            "pickle.load",
            "cPickle.load",
            "dill.load",
            "dill.loads",
            "joblib.load",
            "pd.read_pickle",
            "pandas.read_pickle",
            "pickle.Unpickler",
            "torch.serialization.add_safe_globals",
        ):
            found.append(f"line {node.lineno}: {name}")
        elif name == "pickle.loads":
            argument = node.args[0] if node.args else None
            round_trip = isinstance(argument, ast.Call) and ast.unparse(argument.func) == "pickle.dumps"
            if not round_trip:  # loads(dumps(x)) only checks that x can be pickled: nothing from outside
                found.append(f"line {node.lineno}: pickle.loads")
        if any(k == "allow_pickle" and isinstance(v, ast.Constant) and v.value is True for k, v in keywords.items()):
            found.append(f"line {node.lineno}: {name} with allow_pickle=True")
    return found


def test_the_scan_finds_unsafe_loads():
    bad = (
        "import torch, pickle, numpy as np\n"
        "torch.load(path)\n"
        "torch.load(path, weights_only=False)\n"
        "pickle.load(open(path, 'rb'))\n"
        "pickle.loads(data)\n"
        "np.load(path, allow_pickle=True)\n"
    )
    assert [line.split(":")[0] for line in unsafe_loads(bad)] == ["line 2", "line 3", "line 4", "line 5", "line 6"]
    assert [line.split(":")[0] for line in unsafe_loads(bad, explicit=False)] == ["line 3", "line 4", "line 5", "line 6"]
    good = "torch.load(path, map_location='cpu', weights_only=True)\npickle.loads(pickle.dumps(error))\nnp.load(p, allow_pickle=False)\n"
    assert unsafe_loads(good) == []


def test_no_code_in_the_repository_unpickles_unsafely():
    sources = [
        path
        for path in ROOT.rglob("*.py")
        if not any(part.startswith(".") or part in ("node_modules", "__pycache__") for part in path.relative_to(ROOT).parts)
    ]
    assert len(sources) > 30 and ROOT / "byol" / "checkpoint.py" in sources
    # Code that ships (library, app, pages, benchmarks) must say weights_only=True; tests, which
    # load only files they wrote themselves, must at least never turn it off.
    problems = {
        str(path.relative_to(ROOT)): found
        for path in sources
        if (found := unsafe_loads(path.read_text(), explicit=path.relative_to(ROOT).parts[0] != "tests"))
    }
    assert problems == {}, problems
