"""The dashboard's plain words: the glossary, the help text of every control, and the inspection pages' terms.

Kept apart from the code that draws pages, so the wording can be read and edited in one place:
- `GLOSSARY`: every technical word, shown in the sidebar's "Words used here" on every page;
- `HELP`: the tooltip of each control, keyed by the control's name;
- `TERMS` and `explain()`: the Embeddings and Retrieval pages' words, explained at more length.
"""

from __future__ import annotations

from byol.config import IMAGE_FOLDER_WORDS

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
        "How many independent directions the backbone's features (the ones kNN and retrieval use) really "
        "spread over, from 1 up to the feature size, measured at each evaluation. It counts directions, not "
        "how useful they are: when only the projector collapses, as in the shipped run without batch norm, "
        "the backbone's rank can even rise. A drop towards 1 means the features themselves collapsed."
    ),
    "kNN accuracy": (
        "How well the features sort images without any extra training: each test image gets the most "
        "common class among its k most similar training images (k nearest neighbours). Labels are "
        "used only for this measurement, never for training."
    ),
    "Random-init baseline": (
        "The kNN accuracy of the untrained network, measured at step 0. Training is only worth it above this line."
    ),
    "Raw-pixel baseline": "The kNN accuracy when comparing the raw pixels directly: the floor a learned description should beat.",
    "Epoch / step": "An epoch is one pass over all training images; a step is one batch of them.",
    "Learning rate": "How big each training step's change to the network is. Too high: training blows up; too low: it crawls.",
    "Loss": (
        "How far the online network's guesses are from the target network's answers (0 = perfect, "
        "8 = opposite: it adds both views' guesses). It should fall, but a loss near 0 with falling spread means collapse."
    ),
}

HELP: dict[str, str] = {
    "random_init_knn": "kNN accuracy of the untrained network (step 0): the random-init baseline training must beat.",
    "pixel_knn": "kNN accuracy comparing raw pixels: the floor a learned description must beat.",
    "preset": "A ready-made recipe. Pick cpu on a computer without a GPU; the other fields start from the preset.",
    "data_source": "Which images to learn from. Labels are only used to measure kNN accuracy, never for training.",
    "data_path": f"{IMAGE_FOLDER_WORDS.capitalize()}.",
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
    "optimizer": (
        "The update rule. LARS is BYOL's usual choice with big batches; plain SGD learned fastest in the cpu "
        "recipe's short runs. There a run without batch norm stays collapsed with SGD, or climbs out only "
        "late with its accuracy far behind, and climbs back out early with AdamW."
    ),
    "weight_decay": (
        "A pull of all weights towards zero at every step. AdamW multiplies it by the learning rate, "
        "so it needs values like 0.05 to act; LARS and SGD take smaller ones (1e-5 to 5e-4)."
    ),
    "warmup_epochs": "Epochs over which the learning rate ramps up from zero before it holds and then slowly decreases.",
    "lr_decay_share": (
        "Share of the training (after the warm-up) over which the learning rate slowly falls to zero; "
        "before it, the rate holds its peak. 1 = falls from the start (BYOL's choice); 0.3 = only in the last 30%."
    ),
    "view_resolution": (
        "Size of the training pictures as a share of the images' size: 0.75 trains on 24-pixel views of "
        "32-pixel images, about 1.6x faster. Maps, kNN and search always use whole images."
    ),
    "crop_min_scale": "Smallest share of an image a random crop may keep (0.08 = down to 8% of its area).",
    "jitter_strength": (
        "How strongly the training pictures' colours are changed, as a multiple of BYOL's (brightness and "
        "contrast up to ±40%, saturation ±20%, hue ±0.1 of a turn). 0 = colours unchanged."
    ),
    "predictor_lr_scale": (
        "The predictor's learning rate as a multiple of the rest's. Above 1 the predictor adapts faster, "
        "which can help it keep up with a target that moves quickly (a small τ)."
    ),
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


# The Embeddings and Retrieval pages' words, explained at more length where those pages show them.
TERMS: dict[str, str] = {
    "embedding": (
        "An **embedding** is the list of numbers the network turns an image into. The network was never "
        "told what the images show; images it considers alike simply get similar lists of numbers."
    ),
    "umap": (
        "**UMAP** squeezes each long embedding into just two numbers, so every image becomes a dot on a "
        "flat map, keeping images that were alike close together. Read it by which dots sit together; "
        "the distances between far-apart groups mean little."
    ),
    "knn": (
        "**kNN accuracy** (k nearest neighbours): for each test image, find the k most similar training "
        "images and let them vote for a class, closer ones with a bigger vote. The accuracy is the share "
        "of test images that get their true class. Training never saw a label; labels are only used here, "
        "to grade what the network learned."
    ),
    "cosine": (
        "**Cosine similarity** says how alike two embeddings are: 1 means the same direction (very alike), "
        "0 unrelated, below 0 opposite."
    ),
    "neighbours": ("**Nearest neighbours**: the training images whose embeddings are most similar to the query's."),
    "precision": (
        "**precision@k**: the share of the k neighbours that have the same class as the query. "
        "Chance level is about one in the number of classes."
    ),
    "random_init": (
        "**Random init**: the same network before any training, with random weights (saved at step 0). "
        "What it finds shows what the network gets for free; the difference is what training added."
    ),
    "pixels": (
        "**Raw pixels**: comparing the images pixel by pixel (after subtracting the average image), with no "
        "network at all. A useful embedding should do clearly better than this."
    ),
    "checkpoint": (
        "A **checkpoint** is the network saved at one point in training. The run saves one at every "
        "evaluation, so you can look at the same network early and late in training."
    ),
}


def explain(*terms: str) -> str:
    """The `TERMS` entries for `terms`, one per line (for st.markdown or an expander)."""
    return "\n\n".join(TERMS[t] for t in terms)
