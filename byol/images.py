"""Image files: one picture in the data sets' uint8 format, the decoded-image cache, and upload checks.

- Decoding: `image_to_uint8_tensor` turns any PIL image (grayscale, 16-bit, palette, transparent,
  animated) into uint8 [3, S, S] RGB; `decode_image` does the same from file bytes for bulk loading and
  returns None for unreadable ones; `resize_batch` resizes a whole stack of images.
- Cache: data sets decoded from image folders and archives are stored once as an .npz, named by the
  source's path and stamp and by `CACHE_VERSION`, which changes whenever decoding changes; only a
  source's newest state is kept.
- Uploads: `query_from_upload` turns an uploaded file into the same format, or raises ValueError
  saying plainly what is wrong with it (empty, not an image, damaged, too large).

data.py builds data sets from these pieces; retrieval uses an upload as a query.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from byol.files import write_npz_atomic

log = logging.getLogger(__name__)

# The picture formats an image folder may hold and the Retrieval page names, with their file endings.
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "GIF": (".gif",),
    "BMP": (".bmp",),
    "WebP": (".webp",),
    "TIFF": (".tif", ".tiff"),
}
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(ending for endings in IMAGE_FORMATS.values() for ending in endings)

# Bump when the decoded cache layout or the decoding itself changes, so old caches are not reused.
CACHE_VERSION = 1

# The largest picture the Retrieval page takes. The Streamlit server refuses bigger uploads by its own
# setting, `server.maxUploadSize` in .streamlit/config.toml, which must say the same (tests/test_page_retrieval.py checks).
MAX_UPLOAD_MB = 50
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
MAX_UPLOAD_PIXELS = 50_000_000  # width x height; far above any photo's need, far below a decompression bomb


# --------------------------------------------------------------------------------------------------
# Single images
# --------------------------------------------------------------------------------------------------


def image_to_uint8_tensor(img: Image.Image, image_size: int = 32) -> torch.Tensor:
    """Any PIL image (any mode, first frame of an animation) as a uint8 [3, S, S] RGB tensor."""
    return torch.from_numpy(_image_to_array(img, image_size)).permute(2, 0, 1).contiguous()


def _image_to_array(img: Image.Image, size: int) -> np.ndarray:
    """The work behind `image_to_uint8_tensor`, as HWC numpy so bulk decoding can stack it cheaply."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated GIF/WebP/TIFF: the first frame stands for the file
    # JPEG can decode at 1/2, 1/4 or 1/8 scale for almost free: a big photo never gets decoded in
    # full just to be shrunk to 32x32. A no-op for other formats and already-loaded images.
    img.draft(None, (size, size))
    img = _to_rgb(img)
    if img.size != (size, size):
        # Pillow's bilinear resize is antialiased when shrinking (the filter support grows with the
        # scale), so small textures do not alias. The whole image is squeezed to a square: simple,
        # and nothing at the edges is cut away.
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(img, dtype=np.uint8)  # a writable copy: torch warns about read-only arrays


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "La":  # premultiplied alpha, which Pillow converts only to LA
        img, mode = img.convert("LA"), "LA"
    if mode.startswith("I") or mode == "F":
        # 16/32-bit and float greyscale: Pillow's convert() clips to 0..255 instead of scaling, which
        # turns most 16-bit scans white. Scale the value range to 0..255 ourselves.
        values = np.asarray(img, dtype=np.float32)
        if mode.startswith("I;16"):
            values = values / 257.0
        elif values.size and (values.max() > 255 or values.min() < 0):
            low, high = float(values.min()), float(values.max())
            values = (values - low) * (255.0 / max(high - low, 1e-6))
        return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        # Transparent pixels often hold arbitrary colour (black, or leftovers from editing): dropping
        # alpha would show it. Composite on white, the way such images are usually displayed.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX


def decode_image(data: bytes, size: int) -> np.ndarray | None:
    """Decoded HWC uint8 image, or None when the bytes are not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _image_to_array(img, size)
    except Exception:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, DecompressionBomb...)
        return None


def resize_batch(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """uint8 images [N, 3, H, W] resized to [N, 3, size, size], antialiased.

    In chunks, so a 50k-image float copy never has to exist at once.
    """
    out = []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out).contiguous()


# --------------------------------------------------------------------------------------------------
# Decoded-image cache
# --------------------------------------------------------------------------------------------------


def cache_file(cache_folder: Path, path: Path, stamp: list, image_size: int) -> Path:
    """Where the decoded images of `path` at `image_size` are kept: `folder-<source>-<state>.npz`.

    <source> names the path and image size, <state> the source's stamp and `CACHE_VERSION`: cheap to
    compute on every load (content hashing would cost as much as decoding), and any edit to the source
    (new files, a replaced archive) gives a new name. `write_cache` then removes the source's earlier
    states, so editing a folder again and again does not pile up copies of ~180 MB each.
    """
    source = hashlib.sha256(json.dumps([str(path), image_size]).encode()).hexdigest()[:16]
    state = hashlib.sha256(json.dumps([CACHE_VERSION, stamp]).encode()).hexdigest()[:16]
    return Path(cache_folder) / f"folder-{source}-{state}.npz"


def read_cache(cache_file: Path) -> dict | None:
    """The decoded data set stored in `cache_file` (Dataset fields), or None when missing or unreadable."""
    if not cache_file.is_file():
        return None
    try:
        # Uncompressed .npz: 60k CIFAR images (~180 MB) load in well under a second.
        with np.load(cache_file, allow_pickle=False) as npz:
            return dict(
                classes=[str(c) for c in npz["classes"]],
                train_images=torch.from_numpy(npz["train_images"]),
                train_labels=torch.from_numpy(npz["train_labels"]),
                test_images=torch.from_numpy(npz["test_images"]),
                test_labels=torch.from_numpy(npz["test_labels"]),
                skipped_files=int(npz["skipped_files"]),
            )
    except Exception as exc:  # unreadable or from an older layout: decode again and overwrite it
        log.warning("ignoring unreadable data cache %s: %s", cache_file, exc)
        return None


def write_cache(cache_file: Path, decoded: dict) -> None:
    """Store decoded Dataset fields in `cache_file`; a failure is logged and costs only speed next time."""
    arrays = {k: v.numpy() for k, v in decoded.items() if isinstance(v, torch.Tensor)}
    arrays["classes"] = np.array(decoded["classes"], dtype=str)
    arrays["skipped_files"] = np.array(decoded["skipped_files"], dtype=np.int64)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # Temp file + rename: a process killed mid-write never leaves a torn cache behind.
        write_npz_atomic(cache_file, arrays, compressed=False)
        source = cache_file.name.rsplit("-", 1)[0]  # folder-<source>, as cache_file names it
        for earlier in cache_file.parent.glob(f"{source}-*.npz"):
            if earlier != cache_file:
                earlier.unlink(missing_ok=True)
        # Files named before the name had a <source> part (folder-<16 hex>.npz) are never read again,
        # and nothing tells whose they are: one written cache sweeps them all.
        for unnamed in cache_file.parent.glob("folder-*.npz"):
            if re.fullmatch(r"folder-[0-9a-f]{16}\.npz", unnamed.name):
                unnamed.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or full cache only costs speed next time, never the data
        log.warning("could not write the data cache %s: %s", cache_file, exc)


# --------------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------------

_NOT_AN_IMAGE = "This file is not an image that can be read. Upload a picture file: PNG, JPEG, GIF, BMP, WebP or TIFF."
_DAMAGED = (
    "This image file is damaged or cut short (truncated), so it cannot be read in full. Try saving or downloading it again."
)


def query_from_upload(data: bytes, image_size: int = 32) -> torch.Tensor:
    """An uploaded file as the data set's image format (uint8 [3, S, S] RGB), or a plain ValueError.

    Refuses empty files, files that are not images, damaged or truncated files, and images over
    50 megapixels (checked from the header, before anything is decoded, so a decompression bomb
    costs nothing). Grayscale, 16-bit, palette, transparent and animated images (first frame) are
    converted the way the data sets are (see image_to_uint8_tensor).
    """
    if data is None or len(data) == 0:
        raise ValueError("The uploaded file is empty (0 bytes). Choose a picture file, such as a .png or .jpg.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(
            f"The file is {len(data) / 2**20:.0f} MB; files up to {MAX_UPLOAD_MB} MB are accepted. "
            "The model looks at 32×32 pixels, so a small copy of the picture works just as well."
        )
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
            image_format = img.format
    except Image.DecompressionBombError:
        raise ValueError(_too_large_message(None, None)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError):
        raise ValueError(_NOT_AN_IMAGE) from None
    if width * height > MAX_UPLOAD_PIXELS:
        raise ValueError(_too_large_message(width, height))
    if width < 1 or height < 1:
        raise ValueError(_NOT_AN_IMAGE)
    try:
        # verify() walks the file's structure and checksums without decoding (PNG: every chunk's CRC,
        # up to the end marker), which catches a cut-short file even though data.py lets Pillow decode
        # truncated images (data sets keep slightly damaged JPEGs; a query should not be half grey).
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception:  # Pillow raises many kinds for damaged data
        raise ValueError(_DAMAGED) from None
    if image_format in ("JPEG", "MPO") and _jpeg_cut_short(data):
        raise ValueError(_DAMAGED)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return image_to_uint8_tensor(img, image_size)
    except Image.DecompressionBombError:
        raise ValueError(_too_large_message(width, height)) from None
    except Exception:
        raise ValueError(_DAMAGED) from None


def _too_large_message(width: int | None, height: int | None) -> str:
    size = f"{width:,}×{height:,} pixels ({width * height / 1e6:.0f} megapixels)" if width else "too many pixels"
    return (
        f"This image is too large to open safely: {size}; the limit is {MAX_UPLOAD_PIXELS // 1_000_000} "
        "megapixels. Shrink it first (the model only looks at 32×32 pixels anyway)."
    )


def _jpeg_cut_short(data: bytes) -> bool:
    """True when a JPEG has no end-of-image marker after its last scan (a download cut short).

    Inside compressed scan data a 0xFF byte is always followed by 0x00 or a restart marker, so the
    two markers cannot appear by accident; an EXIF thumbnail's end marker comes before the main scan.
    """
    last_scan = data.rfind(b"\xff\xda")
    return last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0
