"""What every page shares: set-up, the job runner, run pickers, badges, numbers (charts: ui/charts.py; words: ui/words.py).

Pages follow one shape: widgets -> guard (st.info + st.stop) -> one library call -> render. This
module holds the rendering pieces they share, so the pages stay short:

- `page_setup()`: wide layout, title, the glossary in the sidebar;
- `get_runner()`: the server's one JobRunner, held in `st.cache_resource`;
- `plain_errors()`: catches the library's plain errors and shows `st.error(message)` instead of a
  traceback;
- `run_picker()`, `state_badge()`, `fmt_*()`: runs and numbers as people read them.

Nothing here trains or measures: it only reads run folders through byol.runs and draws.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pandas as pd
import streamlit as st

from byol import cifar10, demos, jobs, runs
from byol.collapse import collapse_story, describe_collapse
from byol.config import FIELD_WORDS, PRESETS, TrainConfig
from byol.errors import UserError
from ui.words import GLOSSARY, HELP

ROOT = Path(__file__).resolve().parent.parent
LIVE_REFRESH_SECONDS = 2

PAGES = {
    "home": ("app.py", "Home", ":material/home:"),
    "train": ("pages/1_Train.py", "Train", ":material/model_training:"),
    "compare": ("pages/2_Compare.py", "Compare", ":material/compare_arrows:"),
    "embeddings": ("pages/3_Embeddings.py", "Embeddings", ":material/scatter_plot:"),
    "retrieval": ("pages/4_Retrieval.py", "Retrieval", ":material/image_search:"),
}

# --- plain words -----------------------------------------------------------------------------
STATE_LOOK: dict[str, tuple[str, str, str]] = {
    runs.QUEUED: ("Waiting", "gray", ":material/hourglass_top:"),
    runs.RUNNING: ("Training", "blue", ":material/autorenew:"),
    runs.FINISHED: ("Finished", "green", ":material/check_circle:"),
    runs.STOPPED: ("Stopped", "orange", ":material/pause_circle:"),
    runs.FAILED: ("Failed", "red", ":material/error:"),
    runs.INTERRUPTED: ("Interrupted", "orange", ":material/power_off:"),
}
STATE_TEXT: dict[str, str] = {state: look[0].lower() for state, look in STATE_LOOK.items()}  # in a sentence


# --- set-up ----------------------------------------------------------------------------------
def page_setup(title: str, icon: str = ":material/psychology:") -> None:
    """Wide layout, the page list and the glossary in the sidebar; call first on every page.

    The page list is drawn here, not by Streamlit (hidden in .streamlit/config.toml), because
    Streamlit names the first entry after the file, "app", where a person expects "Home".
    """
    st.set_page_config(page_title=f"{title} · BYOL Studio", page_icon=icon, layout="wide")
    with st.sidebar:
        for key in PAGES:
            link(key)
        glossary_expander()


def glossary_expander(expanded: bool = False) -> None:
    with st.expander("Words used here", expanded=expanded, icon=":material/menu_book:"):
        for word, meaning in GLOSSARY.items():
            st.markdown(f"**{word}**: {meaning}")


def runs_dir() -> Path:
    return runs.default_runs_dir()


@st.cache_resource(show_spinner=False)
def _runner_for(folder: str) -> jobs.JobRunner:
    return jobs.shared_runner(folder)


def get_runner() -> jobs.JobRunner:
    """The server's job runner for the current runs folder (one for all browser sessions)."""
    return _runner_for(str(runs_dir()))


@st.cache_resource(show_spinner=False)
def device_facts() -> dict[str, Any]:
    """Which device trains by default and in which precision: {"name", "is_cpu", "bf16"}."""
    from byol.device import describe_device, resolve_device, use_bf16

    device = resolve_device("auto")
    return {"name": describe_device(device), "is_cpu": device.type == "cpu", "bf16": use_bf16("auto", device)}


@contextlib.contextmanager
def plain_errors() -> Iterator[None]:
    """Show the library's plain errors (UserError) as `st.error(message)`; anything else propagates."""
    try:
        yield
    except UserError as error:
        st.error(str(error), icon=":material/error:")


def redraw_while_live(body: Callable[..., None], live: bool) -> Callable[..., None]:
    """`body` as a fragment that Streamlit reruns every LIVE_REFRESH_SECONDS while `live` (a run it shows
    trains or waits), and draws once otherwise: how Home, Train and Compare follow a training without a
    reload. `body` calls st.rerun() itself when what it shows changes state, so the whole page follows."""
    return st.fragment(run_every=LIVE_REFRESH_SECONDS if live else None)(body)


def link(page: str, label: str | None = None, query_params: dict[str, str] | None = None, **kwargs: Any) -> None:
    """`st.page_link` to one of PAGES by key; silently skipped when that page file does not exist."""
    path, default_label, icon = PAGES[page]
    if not (ROOT / path).is_file():
        return
    st.page_link(path, label=label or default_label, icon=icon, query_params=query_params, **kwargs)


def default_data_path() -> str:
    """The first local CIFAR-10 copy at a documented place (`cifar10.local_copies`), else ''."""
    copy = cifar10.local_copy()
    return str(copy.resolve()) if copy else ""


DATA_CHOICES = {
    "folder": "Local image folder or archive",
    "cifar10": "CIFAR-10 (download from the internet)",
    "synthetic": "Synthetic shapes (no files needed, for a quick try)",
}


def data_source_input(key: str, default: str = "folder") -> str:
    """Radio for the data source and, for a local copy, its path; returns the config's `data` value."""
    default_path = default_data_path()
    if default == "folder" and not default_path:
        default = "synthetic"
    choice = st.radio(
        "Data source",
        list(DATA_CHOICES),
        index=list(DATA_CHOICES).index(default),
        format_func=DATA_CHOICES.get,
        key=f"{key}_source",
        help=HELP["data_source"],
        horizontal=True,
    )
    if choice != "folder":
        return choice
    path = st.text_input(
        "Folder or archive path",
        value=default_path,
        key=f"{key}_path",
        help=HELP["data_path"],
        placeholder="/path/to/images (train/<class>/..., test/<class>/...) or images.tar.gz",
    )
    return path.strip()


# --- runs ------------------------------------------------------------------------------------
def state_badge(state: str) -> None:
    label, color, icon = STATE_LOOK.get(state, (state, "gray", ":material/help:"))
    st.badge(label, color=color, icon=icon)


def state_text(state: str) -> str:
    return STATE_TEXT.get(state, state)


def pick_default_run(summaries: Sequence[runs.RunSummary], wanted: str | None = None) -> int:
    """Index of the run to show first: `wanted` (e.g. ?run=), else a training one, else the newest of
    the user's own, else the main shipped demo (not the collapsed half of the shipped batch-norm pair)."""
    names = [s.name for s in summaries]
    if wanted in names:
        return names.index(wanted)
    for i, summary in enumerate(summaries):
        if summary.state == runs.RUNNING:
            return i
    for i, summary in enumerate(summaries):
        if not summary.demo:
            return i
    demo = demos.main_demo(list(summaries))
    return names.index(demo.name) if demo else 0


def run_picker(summaries: Sequence[runs.RunSummary], key: str, label: str = "Run") -> runs.RunSummary | None:
    """A selectbox over runs (newest first) whose first choice honours `?run=<name>`; syncs the URL."""
    if not summaries:
        return None
    names = [s.name for s in summaries]
    by_name = {s.name: s for s in summaries}
    wanted = st.query_params.get("run")
    url_key = f"_{key}_url"  # the ?run= value this picker last wrote; a different one came from a link
    if wanted in names and wanted != st.session_state.get(url_key) and wanted != st.session_state.get(key):
        st.session_state[key] = wanted
    elif st.session_state.get(key) not in names:
        st.session_state[key] = names[pick_default_run(summaries, wanted)]
    # Names only: the state changes while a run trains, and a label drawn outside the live
    # fragment would go stale (the state badge inside the fragment tells it instead).
    name = st.selectbox(label, names, key=key, help=HELP["pick_run"])
    st.session_state[url_key] = name
    if wanted != name:
        st.query_params["run"] = name
    return by_name[name]


def runs_table(summaries: Sequence[runs.RunSummary]) -> pd.DataFrame:
    """The runs as people read them: one row per run."""
    rows = []
    show_world = any(s.world_size > 1 for s in summaries)
    for s in summaries:
        row = {
            "Run": s.name,
            "Status": state_text(s.state),
            "Epochs": f"{fmt_number(s.epochs_done)} / {s.epochs_total}",
            "Latest kNN %": s.latest_knn,
            "Best kNN %": s.best_knn,
            "BN in heads": "yes" if s.head_bn else "no",
            # Judged from the logged spread: a run that has logged none (still waiting) is not judged yet.
            "Collapsed": describe_collapse(s.collapse) if s.last_z_std is not None else None,
            "Data": runs.data_label(s.data),
            "Disk": fmt_bytes(s.disk_bytes),
            "Started": s.started or "not yet",
        }
        if show_world:  # runs trained with torchrun: one process per GPU (or several on a CPU)
            row["Processes"] = s.world_size
        rows.append(row)
    return pd.DataFrame(rows)


RUNS_TABLE_COLUMNS = {
    "Latest kNN %": st.column_config.NumberColumn(format="%.1f", help="kNN accuracy at the newest measurement"),
    "Best kNN %": st.column_config.NumberColumn(
        format="%.1f",
        help="Highest kNN accuracy the trained network reached so far (the untrained network's figure is its baseline, not counted)",
    ),
    "Status": st.column_config.TextColumn(help="One of: " + ", ".join(STATE_TEXT.values())),
    "Collapsed": st.column_config.TextColumn(
        help="Whether the run collapsed (came to give every picture nearly the same description), by the Compare page's measure"
    ),
    "Data": st.column_config.TextColumn(
        help="The images the run learns from, named by where they are on this computer: a shipped run names "
        "cifar10 until a page has found its images in a local copy (then, say, cifar10-jpg: the same pictures)"
    ),
    "Processes": st.column_config.NumberColumn(help="Training processes (torchrun from the command line): one per GPU"),
}


# --- numbers ---------------------------------------------------------------------------------
NO_VALUE = "–"  # what a page shows for a figure not measured (yet), in text, metrics and tables alike


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return NO_VALUE if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}%"


def collapse_sentences(summary: runs.RunSummary, subject: str) -> str:
    """A collapsed run told to a visitor, `subject` naming it ("the network"): how it collapsed, then
    its kNN accuracy against raw pixels' (where it ended, where it is while it still trains, or, before
    its first evaluation after step 0, that it is not measured yet: the figure so far is the untrained network's)."""
    assert summary.collapse is not None
    live = summary.state in runs.LIVE_STATES
    story = f"{subject} {collapse_story(summary.collapse, still_training=live)}."
    if summary.best_knn is None:  # only the untrained network has been measured
        return (
            f"{story} Its kNN accuracy is not measured yet; untrained, the network scored {fmt_pct(summary.baseline_knn)}, "
            f"against {fmt_pct(summary.pixel_knn)} for raw pixels."
        )
    verb = "is now" if live else "ended at"
    return f"{story} Its kNN accuracy {verb} {fmt_pct(summary.latest_knn)}, against {fmt_pct(summary.pixel_knn)} for raw pixels."


def fmt_number(value: float | None) -> str:
    if value is None:
        return NO_VALUE
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}".rstrip("0").rstrip(".")


def fmt_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def fmt_duration(seconds: float | None) -> str:
    """'45 s', '12 min', '3 h 05 min', '2 days 4 h'."""
    if seconds is None or not math.isfinite(seconds):
        return NO_VALUE
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min"
    hours, minutes = divmod(round(minutes), 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h"


def shared_value(values: Iterable[float | None]) -> float | None:
    """The one value that every item of `values` that has one has, else None (none has one, or they
    differ): a reference line drawn over several runs' curves must hold for all of them. A run that has
    not measured it yet (queued behind its partner in the batch-norm experiment) does not hide it."""
    found = {v for v in values if v is not None}
    return found.pop() if len(found) == 1 else None


def config_differences(configs: dict[str, TrainConfig]) -> pd.DataFrame:
    """Settings that differ between runs: one row per setting, one column per run."""
    dicts = {name: config.to_dict() for name, config in configs.items()}
    fields = list(next(iter(dicts.values())).keys()) if dicts else []
    rows = []
    for field in fields:
        values = [d.get(field) for d in dicts.values()]
        if len({repr(v) for v in values}) > 1:
            words = FIELD_WORDS.get(field, field)
            rows.append({"setting": f"{words} ({field})", **{name: _show(d.get(field)) for name, d in dicts.items()}})
    return pd.DataFrame(rows)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def preset_label(name: str) -> str:
    config = PRESETS[name]
    return f"{name} · width {config.width}, {config.epochs} epochs{'' if config.head_bn else ', no batch norm'}"
