"""What every page shares: set-up, the job runner, plain words, run pickers, badges, numbers, charts.

Pages follow one shape: widgets -> guard (st.info + st.stop) -> one library call -> render. This
module holds the rendering pieces they share, so the pages stay short:

- `page_setup()`: wide layout, title, the glossary in the sidebar;
- `get_runner()`: the server's one JobRunner, held in `st.cache_resource`;
- `GLOSSARY` and `HELP`: every technical word and every control explained in plain language;
- `plain_errors()`: catches the library's plain errors and shows `st.error(message)` instead of a
  traceback;
- `run_picker()`, `state_badge()`, `fmt_*()`: runs and numbers as people read them;
- `*_figure()`: the plotly charts (loss, kNN with baselines, collapse meter, effective rank, overlays);
- `upscale()`: 32x32 images enlarged with nearest-neighbour sampling, so pixels stay sharp.

Nothing here trains or measures: it only reads run folders through byol.runs and draws.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from byol import jobs, runs
from byol.checkpoint import CheckpointError
from byol.collapse import DEFAULT_FRACTION, collapse_point, healthy_std, smooth
from byol.config import PRESETS, ConfigError, TrainConfig
from byol.data import DataError
from byol.lock import DeviceBusy

ROOT = Path(__file__).resolve().parent.parent
PLAIN_ERRORS = (ConfigError, DataError, CheckpointError, runs.RunError, DeviceBusy)
LIVE_REFRESH_SECONDS = 2

PAGES = {
    "home": ("app.py", "Home", ":material/home:"),
    "train": ("pages/1_Train.py", "Train", ":material/model_training:"),
    "compare": ("pages/2_Compare.py", "Compare", ":material/compare_arrows:"),
    "embeddings": ("pages/3_Embeddings.py", "Embeddings", ":material/scatter_plot:"),
    "retrieval": ("pages/4_Retrieval.py", "Retrieval", ":material/image_search:"),
}

# --- plain words -----------------------------------------------------------------------------
GLOSSARY: dict[str, str] = {
    "BYOL": (
        "Bootstrap Your Own Latent: a way to teach a network to describe images without any labels. "
        "It shows the network two randomly edited copies of each image and trains it so that both "
        "copies get the same description."
    ),
    "Backbone": "The image network being trained (a ResNet-18). Its output is the image's description (its features).",
    "Projector": "A small extra network after the backbone that turns features into the vectors the training compares.",
    "Predictor": (
        "A small network on the online side only, which guesses the target network's vector for the "
        "other copy of the image. This one-sidedness is part of what keeps BYOL from cheating."
    ),
    "Online / target network": (
        "BYOL trains two copies of the network. The online one learns by gradient descent; the target "
        "one is a slowly moving average of the online one and provides the answers to match."
    ),
    "EMA": (
        "Exponential moving average: after each step the target network moves a small step towards "
        "the online one (new target = τ × old target + (1 − τ) × online)."
    ),
    "τ (tau)": (
        "How slowly the target network follows the online one. 0.99 means it keeps 99% of itself "
        "each step; it rises towards 1 (frozen) during training on the cosine schedule."
    ),
    "Batch norm": (
        "Batch normalisation: a layer that rescales each feature using statistics of the whole batch. "
        "In BYOL's projector and predictor it also helps keep different images apart; without it "
        "the training tends to collapse."
    ),
    "Collapse": (
        "The failure where the network gives every image (nearly) the same vector. The loss then "
        "looks great, but the model has learned nothing useful."
    ),
    "Projection spread (z_std)": (
        "How much the normalised projector outputs vary from image to image, per dimension. Healthy "
        "training stays near 1/√d (d = projector output size); a collapsing one falls towards 0."
    ),
    "Effective rank": (
        "How many independent directions the features really use (from 1 up to the feature size). "
        "A sudden drop towards 1 is another sign of collapse."
    ),
    "kNN accuracy": (
        "How well the features sort images without any extra training: each test image gets the most "
        "common class among its k most similar training images (k nearest neighbours). Labels are "
        "used only for this measurement, never for training."
    ),
    "Random-init baseline": (
        "The kNN accuracy of the untrained network, measured at step 0. Training is only worth it "
        "above this line."
    ),
    "Raw-pixel baseline": "The kNN accuracy when comparing the raw pixels directly: the floor a learned description should beat.",
    "Epoch / step": "An epoch is one pass over all training images; a step is one batch of them.",
    "Learning rate": "How big each training step's change to the network is. Too high: training blows up; too low: it crawls.",
    "Loss": (
        "How far the online network's guesses are from the target network's answers (0 = perfect, "
        "4 = opposite). It should fall, but a loss near 0 with falling spread means collapse."
    ),
}

HELP: dict[str, str] = {
    "preset": "A ready-made recipe. Pick cpu on a computer without a GPU; the other fields start from the preset.",
    "data_source": "Which images to learn from. Labels are only used to measure kNN accuracy, never for training.",
    "data_path": "A folder with train/<class>/ and test/<class>/ images, or a .tar.gz/.zip archive of one.",
    "epochs": "How many times the training goes over all training images. More epochs: better model, longer wait.",
    "batch_size": "How many images each step looks at. Bigger is faster per image but needs more memory.",
    "lr": "Peak learning rate, quoted for a batch of 256 images and scaled with the batch size. How big each step's change is.",
    "width": "Channels of the network's first stage: 64 is the standard ResNet-18; 16 is 16x cheaper, for CPUs.",
    "head_bn": "Batch norm in the projector and predictor. Turn it off to watch BYOL collapse.",
    "seed": "Starting point of the random numbers. Same seed and settings: the same run again.",
    "subset": "Train on only this many training images (0 = all). Smaller is faster but learns less.",
    "projector_hidden": "Hidden layer size of the projector (the small network after the backbone).",
    "projector_dim": "Size of the vectors the training compares (d). The healthy spread is 1/√d.",
    "predictor_hidden": "Hidden layer size of the predictor (the online side's guessing network).",
    "optimizer": "The update rule. LARS is BYOL's usual choice with big batches; AdamW is easier on small runs.",
    "weight_decay": "A gentle pull of all weights towards zero, which keeps the network from overfitting.",
    "warmup_epochs": "Epochs over which the learning rate ramps up from zero before its slow decrease.",
    "tau_base": "How slowly the target network (the moving average) follows the online one at the start; close to 1 = slowly.",
    "tau_schedule": "cosine: τ rises from its start value to 1 during training (BYOL's choice); fixed: τ stays the same.",
    "eval_every": "Epochs between kNN accuracy measurements (fractions allowed). More often: finer curves, slower training.",
    "eval_bank_size": "Training images the kNN measurement searches among (0 = all). Fewer is faster and a little less accurate.",
    "eval_query_size": "Test images the kNN measurement classifies (0 = all).",
    "knn_k": "How many nearest neighbours vote on each test image's class.",
    "device": "Where to train: auto picks the GPU when there is one.",
    "precision": "auto uses bf16 (half-size numbers, about twice as fast) where the hardware supports it; fp32 is exact.",
    "run_name": "Optional folder name for the run; leave empty for a name made of the date, preset and data.",
    "estimate": "Times a few real training steps of this network on this machine (a few seconds) and scales up.",
    "resume_epochs": "Total epochs after resuming. Raise it to train a finished run further.",
    "smoothing": "Averages each curve over recent points so trends show through the noise (0 = raw values).",
    "compare_runs": "Pick the runs to draw on top of each other.",
    "pick_run": "Which run to show.",
    "confirm_delete": "Deleting removes the run's folder with all its checkpoints and curves. It cannot be undone.",
    "bn_base": "The recipe both runs of the experiment start from.",
}

STATE_LOOK: dict[str, tuple[str, str, str]] = {
    runs.QUEUED: ("Waiting", "gray", ":material/hourglass_top:"),
    runs.RUNNING: ("Training", "blue", ":material/autorenew:"),
    runs.FINISHED: ("Finished", "green", ":material/check_circle:"),
    runs.STOPPED: ("Stopped", "orange", ":material/pause_circle:"),
    runs.FAILED: ("Failed", "red", ":material/error:"),
    runs.INTERRUPTED: ("Interrupted", "orange", ":material/power_off:"),
}
STATE_TEXT: dict[str, str] = {
    runs.QUEUED: "waiting", runs.RUNNING: "training", runs.FINISHED: "finished",
    runs.STOPPED: "stopped", runs.FAILED: "failed", runs.INTERRUPTED: "interrupted",
}


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
    """Show the library's plain errors as `st.error(message)`; anything else propagates."""
    try:
        yield
    except PLAIN_ERRORS as error:
        st.error(str(error), icon=":material/error:")


def link(page: str, label: str | None = None, query_params: dict[str, str] | None = None, **kwargs: Any) -> None:
    """`st.page_link` to one of PAGES by key; silently skipped when that page file does not exist."""
    path, default_label, icon = PAGES[page]
    if not (ROOT / path).is_file():
        return
    st.page_link(path, label=label or default_label, icon=icon, query_params=query_params, **kwargs)


def default_data_path() -> str:
    """The local CIFAR-10 copy next to the project (../shared/data/cifar10-jpg.tar.gz) if present, else ''."""
    for candidate in (ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz", ROOT / "data" / "cifar10-jpg.tar.gz"):
        if candidate.is_file():
            return str(candidate.resolve())
    return ""


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
        "Data source", list(DATA_CHOICES), index=list(DATA_CHOICES).index(default),
        format_func=DATA_CHOICES.get, key=f"{key}_source", help=HELP["data_source"], horizontal=True,
    )
    if choice != "folder":
        return choice
    path = st.text_input(
        "Folder or archive path", value=default_path, key=f"{key}_path", help=HELP["data_path"],
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
    """Index of the run to show first: `wanted` (e.g. ?run=), else a training one, else the newest."""
    names = [s.name for s in summaries]
    if wanted in names:
        return names.index(wanted)
    for i, summary in enumerate(summaries):
        if summary.state == runs.RUNNING:
            return i
    return 0


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
            "Data": short_data(s.data),
            "Disk": fmt_bytes(s.disk_bytes),
            "Started": s.started or "not yet",
        }
        if show_world:  # runs trained with torchrun: one process per GPU (or several on a CPU)
            row["Processes"] = s.world_size
        rows.append(row)
    return pd.DataFrame(rows)


RUNS_TABLE_COLUMNS = {
    "Latest kNN %": st.column_config.NumberColumn(format="%.1f", help="kNN accuracy at the newest measurement"),
    "Best kNN %": st.column_config.NumberColumn(format="%.1f", help="Highest kNN accuracy measured so far"),
    "Status": st.column_config.TextColumn(help="waiting, training, finished, stopped, failed or interrupted"),
    "Processes": st.column_config.NumberColumn(help="Training processes (torchrun from the command line): one per GPU"),
}


def short_data(source: str) -> str:
    if source in ("cifar10", "synthetic"):
        return source
    return Path(source).name or source


# --- numbers ---------------------------------------------------------------------------------
def fmt_pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}%"


def fmt_number(value: float | None) -> str:
    if value is None:
        return "–"
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
        return "–"
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


# --- charts ----------------------------------------------------------------------------------
PALETTE = ["#3b5bdb", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0b7285", "#e67700", "#495057"]


def _base_figure(title: str, y_title: str, x_title: str = "epoch", height: int = 320, subtitle: str = "") -> go.Figure:
    figure = go.Figure()
    figure.update_layout(
        title=dict(text=title, x=0, font=dict(size=15), subtitle=dict(text=subtitle, font=dict(size=12, color="#868e96"))),
        height=height,
        margin=dict(l=10, r=10, t=60 if subtitle else 40, b=10),
        xaxis_title=x_title,
        yaxis_title=y_title,
        hovermode="x unified",
        showlegend=False,
    )
    figure.update_xaxes(rangemode="tozero")
    return figure


def step_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics["kind"] == "step"] if "kind" in metrics else metrics.iloc[0:0]


def eval_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics["kind"] == "eval"] if "kind" in metrics else metrics.iloc[0:0]


def _column(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows of `frame` that have a value in `name` (always with step, epoch and `name` columns)."""
    if name not in frame or "epoch" not in frame or "step" not in frame:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "epoch": pd.Series(dtype="float"), name: pd.Series(dtype="float")})
    return frame[frame[name].notna()]


def _smoothed(values: Sequence[float], weight: float) -> list[float | None]:
    return smooth(list(values), weight) if weight > 0 else list(values)


def loss_figure(metrics: pd.DataFrame, smoothing: float = 0.0) -> go.Figure:
    rows = _column(step_rows(metrics), "loss")
    figure = _base_figure("Loss", "loss", subtitle="lower = the two copies agree more")
    if smoothing > 0:
        figure.add_scatter(x=rows["epoch"], y=rows["loss"], mode="lines", name="raw", line=dict(color="#adb5bd", width=1))
    figure.add_scatter(
        x=rows["epoch"], y=_smoothed(rows["loss"], smoothing), mode="lines" if len(rows) >= 20 else "lines+markers", name="loss",
        line=dict(color=PALETTE[0], width=2), customdata=rows["step"], hovertemplate="%{y:.4f} (step %{customdata})",
    )
    return figure


def knn_figure(metrics: pd.DataFrame, baseline: float | None = None, pixel: float | None = None) -> go.Figure:
    """kNN accuracy over training with the random-init and raw-pixel baselines as reference lines."""
    rows = _column(eval_rows(metrics), "knn")
    figure = _base_figure("kNN accuracy", "kNN accuracy (%)", subtitle="higher = better features")
    figure.add_scatter(
        x=rows["epoch"], y=rows["knn"], mode="lines+markers", name="kNN accuracy",
        line=dict(color=PALETTE[2], width=2), customdata=rows["step"], hovertemplate="%{y:.1f}% (step %{customdata})",
    )
    if baseline is not None:
        figure.add_hline(y=baseline, line=dict(color="#868e96", dash="dash"),
                         annotation_text=f"random init {baseline:.1f}%", annotation_position="bottom right")
    if pixel is not None:
        figure.add_hline(y=pixel, line=dict(color="#e8590c", dash="dot"),
                         annotation_text=f"raw pixels {pixel:.1f}%", annotation_position="top right")
    return figure


def collapse_figure(metrics: pd.DataFrame, projector_dim: int, smoothing: float = 0.0, fraction: float = DEFAULT_FRACTION) -> go.Figure:
    """The collapse meter: projection spread with the healthy level 1/√d and the collapse threshold."""
    rows = _column(step_rows(metrics), "z_std")
    healthy = healthy_std(projector_dim)
    figure = _base_figure("Collapse meter", "spread (z_std)", subtitle="projection spread; falling to 0 = collapse")
    figure.add_scatter(
        x=rows["epoch"], y=_smoothed(rows["z_std"], smoothing), mode="lines" if len(rows) >= 20 else "lines+markers", name="spread",
        line=dict(color=PALETTE[3], width=2), customdata=rows["step"], hovertemplate="%{y:.4f} (step %{customdata})",
    )
    figure.add_hline(y=healthy, line=dict(color="#2b8a3e", dash="dash"),
                     annotation_text=f"healthy 1/√{projector_dim} = {healthy:.3f}", annotation_position="top right")
    figure.add_hline(y=fraction * healthy, line=dict(color="#c92a2a", dash="dot"),
                     annotation_text=f"collapse line ({fraction:.0%} of healthy)", annotation_position="bottom right")
    step = collapse_point(rows, projector_dim, fraction)
    if step is not None:
        epoch = float(rows.loc[rows["step"] == step, "epoch"].iloc[0])
        figure.add_vline(x=epoch, line=dict(color="#c92a2a"), annotation_text="collapsed", annotation_position="top left")
    figure.update_yaxes(rangemode="tozero")
    return figure


def rank_figure(metrics: pd.DataFrame) -> go.Figure:
    rows = _column(eval_rows(metrics), "effective_rank")
    figure = _base_figure("Effective rank", "effective rank", subtitle="directions the features use; higher = richer")
    figure.add_scatter(
        x=rows["epoch"], y=rows["effective_rank"], mode="lines+markers", name="effective rank",
        line=dict(color=PALETTE[4], width=2), customdata=rows["step"], hovertemplate="%{y:.1f} (step %{customdata})",
    )
    if "feature_dim" in rows and len(rows):
        figure.add_hline(y=float(rows["feature_dim"].iloc[-1]), line=dict(color="#adb5bd", dash="dash"),
                         annotation_text="feature size (the maximum)", annotation_position="bottom right")
    figure.update_yaxes(rangemode="tozero")
    return figure


def overlay_figure(
    frames: dict[str, pd.DataFrame],
    column: str,
    title: str,
    y_title: str,
    kind: str = "step",
    smoothing: float = 0.0,
    log_y: bool = False,
    markers: dict[str, int | None] | None = None,
) -> go.Figure:
    """One line per run of `column` over epochs; `markers` = run name -> step to mark with an ✕."""
    figure = _base_figure(title, y_title, height=400)
    figure.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0), margin=dict(b=10))
    for i, (name, metrics) in enumerate(frames.items()):
        rows = _column(step_rows(metrics) if kind == "step" else eval_rows(metrics), column)
        color = PALETTE[i % len(PALETTE)]
        y = _smoothed(rows[column], smoothing) if kind == "step" else list(rows[column])
        few = kind != "step" or len(rows) < 20  # a line through one or two points would not show
        figure.add_scatter(
            x=rows["epoch"], y=y, mode="lines+markers" if few else "lines", name=name,
            line=dict(color=color, width=2), customdata=rows["step"], hovertemplate=f"{name}: %{{y:.4g}} (step %{{customdata}})<extra></extra>",
        )
        step = (markers or {}).get(name)
        if step is not None and len(rows):
            hit = rows[rows["step"] == step]
            if len(hit):
                index = hit.index[0]
                position = list(rows.index).index(index)
                figure.add_scatter(
                    x=[float(hit["epoch"].iloc[0])], y=[y[position]], mode="markers", name=f"{name} collapsed",
                    marker=dict(symbol="x", size=14, color=color, line=dict(width=2)),
                    hovertemplate=f"{name} collapsed at step {step:,}<extra></extra>",
                )
    if log_y:
        figure.update_yaxes(type="log")
    figure.update_layout(hovermode="closest", showlegend=True)
    return figure


def config_differences(configs: dict[str, TrainConfig]) -> pd.DataFrame:
    """Settings that differ between runs: one row per setting, one column per run."""
    dicts = {name: config.to_dict() for name, config in configs.items()}
    fields = list(next(iter(dicts.values())).keys()) if dicts else []
    rows = []
    for field in fields:
        values = [d.get(field) for d in dicts.values()]
        if len({repr(v) for v in values}) > 1:
            rows.append({"setting": field, **{name: _show(d.get(field)) for name, d in dicts.items()}})
    return pd.DataFrame(rows)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- images ----------------------------------------------------------------------------------
def upscale(image: Any, scale: int = 4) -> Image.Image:
    """A small image enlarged `scale` times with nearest-neighbour sampling (crisp pixels).

    Accepts a PIL image, or a uint8 array/tensor shaped HxWx3, 3xHxW or HxW.
    """
    if not isinstance(image, Image.Image):
        array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.dtype != np.uint8:
            array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def preset_label(name: str) -> str:
    config = PRESETS[name]
    return f"{name} · width {config.width}, {config.epochs} epochs{'' if config.head_bn else ', no batch norm'}"
