"""A grid of small pictures that are themselves the buttons: clicking one (or Enter/Space on it) reports its number.

Why this module exists: Streamlit has no clickable image. A "Search" button under each picture made
people aim below what they were looking at. This draws the pictures with `st.components.v2.component`
(Streamlit 1.67's built-in inline HTML/CSS/JS components: no iframe, no build step, no extra
dependency; st-clickable-images, the third-party alternative, is an old iframe component).

Each picture is a real `<button data-index="N">` holding an `<img alt="test image #N (class)">`
upscaled with sharp pixels, with the caption "#N class" under it, a visible hover and keyboard-focus
cue, and the data set's own number as a stable handle for browser tests. The class names come from
the data set's folders, so the script sets them as text and attributes, never as HTML.

AppTest cannot run the script, so the plain parts (`tiles`, `clicked_index`) are testable alone and
a page reacts to a click through the `on_click` callback it passes (tests set the page's state instead).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Callable, Sequence

import numpy as np
import streamlit as st
from streamlit.components.v2 import component as define_component

NAME = "byol_picture_grid"

CSS = """
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(calc(var(--size) + 10px), 1fr)); gap: 0.5rem 0.25rem; }
button.picture {
    display: flex; flex-direction: column; align-items: center; gap: 0.15rem;
    margin: 0; padding: 3px; border: 2px solid transparent; border-radius: 0.5rem;
    background: none; color: inherit; font: inherit; cursor: pointer;
}
button.picture img {
    display: block; width: var(--size); height: var(--size);
    image-rendering: pixelated;  /* 32x32 pictures: big, square pixels rather than a blur */
    border-radius: 0.25rem;
}
/* "#1016 automobile" is wider than the picture: the class name wraps under the number. */
button.picture span { max-width: var(--size); font-size: 0.8rem; line-height: 1.2; opacity: 0.75; text-align: center; }
button.picture:hover { border-color: var(--st-primary-color, #ff4b4b); background: rgba(128, 128, 128, 0.08); }
button.picture:hover img { filter: brightness(1.08); }
button.picture:focus-visible { outline: 3px solid var(--st-primary-color, #ff4b4b); outline-offset: 2px; }
button.picture[aria-pressed="true"] { border-color: var(--st-primary-color, #ff4b4b); }
"""

# Called on every rerun with the latest data: the grid is redrawn, the one click listener kept.
JS = """
export default function ({ data, parentElement, setTriggerValue }) {
    let grid = parentElement.querySelector('.grid');
    if (!grid) {
        grid = document.createElement('div');
        grid.className = 'grid';
        grid.setAttribute('role', 'group');
        parentElement.appendChild(grid);
        grid.addEventListener('click', (event) => {
            const button = event.target.closest('button[data-index]');
            if (button) grid.trigger('clicked', Number(button.dataset.index));
        });
    }
    grid.trigger = setTriggerValue;
    grid.style.setProperty('--size', `${data.size}px`);
    grid.setAttribute('aria-label', data.label);
    const focused = parentElement.activeElement && parentElement.activeElement.dataset
        ? parentElement.activeElement.dataset.index : null;
    grid.replaceChildren(...data.pictures.map((picture) => {
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'picture';
        button.dataset.index = String(picture.index);
        button.title = picture.hint;
        button.setAttribute('aria-pressed', String(picture.index === data.selected));
        const img = document.createElement('img');
        img.src = picture.src;
        img.alt = picture.alt;
        const caption = document.createElement('span');
        caption.textContent = picture.caption;
        caption.setAttribute('aria-hidden', 'true');  // the alt text already says it
        button.append(img, caption);
        return button;
    }));
    if (focused !== null) {  // a rerun redraws the buttons: keep keyboard focus where it was
        const again = grid.querySelector(`button[data-index="${focused}"]`);
        if (again) again.focus();
    }
}
"""


def png_data_url(image: Any) -> str:
    """A uint8 [3, H, W] image as a PNG data URL, at its own size (the browser upscales it)."""
    from PIL import Image

    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError("A picture must have shape [3, height, width].")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)).astype(np.uint8), "RGB").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def tiles(images: Any, indices: Sequence[int], labels: Any, classes: Sequence[str]) -> list[dict[str, Any]]:
    """What the grid draws for test images `indices`: number, picture, alt text, caption and hover hint."""
    result = []
    for index in indices:
        name = classes[int(labels[int(index)])]
        result.append(
            {
                "index": int(index),
                "src": png_data_url(images[int(index)]),
                "alt": f"test image #{index} ({name})",
                "caption": f"#{index} {name}",
                "hint": f"Search the training images for the ones most like test image #{index}",
            }
        )
    return result


def clicked_index(value: Any) -> int | None:
    """The picture number a click reported, or None for anything else (no click, a malformed value)."""
    if isinstance(value, bool):
        return None
    try:
        return int(value) if value is not None and float(value) == int(value) else None
    except (TypeError, ValueError, OverflowError):
        return None


def picture_grid(
    pictures: list[dict[str, Any]],
    key: str,
    on_click: Callable[[int], None],
    size: int = 80,
    selected: int | None = None,
    label: str = "Pictures",
) -> None:
    """Draw `pictures` (from `tiles`) `size` pixels wide; a click calls `on_click(number)` before the rerun."""
    # Registered on every call: identical re-registration is silent, and each AppTest run has a new registry.
    component = define_component(NAME, css=CSS, js=JS)

    def clicked() -> None:
        index = clicked_index((st.session_state.get(key) or {}).get("clicked"))
        if index is not None:
            on_click(index)

    component(
        key=key,
        data={"pictures": pictures, "size": int(size), "selected": selected, "label": label},
        on_clicked_change=clicked,
    )
