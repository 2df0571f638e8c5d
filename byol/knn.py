"""Feature extraction, weighted kNN accuracy, the raw-pixel floor and the effective rank.

The kNN monitor is the field's (InstDisc / solo-learn / lightly): L2-normalised features, cosine
similarity, the k most similar bank images vote for their class with weight exp(sim / T).
Bank = training split without augmentation, queries = test split. It needs no labels to train, so
it is the honest, cheap measure of what self-supervision learned. `chosen_images` fixes which
images a run trains on and grades with, so runs of the same sizes share them.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .augment import plain_view
from .config import KNN_K, KNN_TEMPERATURE, TrainConfig
from .dataset import Dataset
from .device import bf16_available
from .files import remembered


def autocast_context(device: torch.device, use_bf16: bool, cache: bool = True):
    """bf16 autocast on the given device when asked for, else a no-op context.

    `cache=False` recasts the weights at each use instead of keeping the casts for the region, which
    a CUDA graph capture requires.
    """
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    batch_size: int = 512,
    use_bf16: bool = False,
    channels_last: bool = False,
    normalize: bool = True,
) -> torch.Tensor:
    """Backbone features of uint8 images, in eval mode, as float32 (L2-normalised unless told not to).

    Images are moved to the backbone's device batch by batch, so a CPU-resident bank works with a
    GPU backbone. Returns features on the backbone's device.
    """
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    chunks = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = plain_view(images[start : start + batch_size].to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, use_bf16):
                chunks.append(backbone(x).float())
    finally:
        backbone.train(was_training)
    features = torch.cat(chunks) if chunks else torch.empty(0, 0, device=device)
    return F.normalize(features, dim=1) if normalize else features


@torch.no_grad()
def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = 512,
    fast: bool | None = None,
) -> torch.Tensor:
    """Weighted-vote kNN class predictions for L2-normalised `queries` against an L2-normalised `bank`.

    The similarity search is the cost (10k queries x 50k bank x 512 features = 0.5 TFLOP). Where the
    hardware has fast bf16 (`fast`, default: detected), the search runs in bf16 on the bank with its
    mean removed: q·b = q·(b - mean) + q·mean, where q·mean is one fp32 number per query, so the
    ranking is unchanged and bf16's ~0.4% rounding acts only on the small part that differs between
    images (an untrained network's features all point almost the same way: their cosine similarities
    differ in the second decimal, below bf16's resolution near 1). Neighbours and weights then match
    the all-fp32 search except for near-ties; tests and the benchmark compare both paths.
    """
    n = bank.shape[0]
    k = min(k, n)
    bank_labels = bank_labels.to(bank.device)
    fast = bf16_available(bank.device) if fast is None else fast  # GPU, or an AMX/AVX512-BF16 CPU
    bank_mean = bank.mean(dim=0)
    bank_coarse = (bank - bank_mean).to(torch.bfloat16) if fast else None
    predictions = []
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size].to(bank.device, bank.dtype)
        if bank_coarse is not None:
            top_centred, top_idx = (q.to(torch.bfloat16) @ bank_coarse.T).topk(k, dim=1)
            top_sim = top_centred.float() + (q @ bank_mean).unsqueeze(1)  # back to cosine similarity
        else:
            top_sim, top_idx = (q @ bank.T).topk(k, dim=1)  # cosine similarity
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions).cpu()


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> float:
    """Share of queries whose kNN vote equals their label, in percent."""
    predicted = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    return accuracy_percent(predicted, query_labels)


def accuracy_percent(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of predictions equal to their labels, in percent."""
    return 100.0 * float((predicted.cpu() == labels.cpu()).float().mean())


def per_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Accuracy in percent for each class (NaN for a class without queries)."""
    result = []
    for c in range(num_classes):
        mask = labels == c
        result.append(100.0 * float((predicted[mask] == c).float().mean()) if mask.any() else float("nan"))
    return result


def per_class_to_json(values: list[float]) -> list[float | None]:
    """Per-class accuracies as a JSON file keeps them: a class without queries (NaN, which JSON lacks) as null."""
    return [None if math.isnan(v) else v for v in values]


def per_class_from_json(values: list[float | None]) -> list[float]:
    """Per-class accuracies read back from JSON: null as NaN again."""
    return [float("nan") if v is None else float(v) for v in values]


def pixel_features(images: torch.Tensor, mean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-centred, L2-normalised raw pixels (and the mean used, so queries centre on the bank's mean)."""
    flat = images.reshape(images.shape[0], -1).float() / 255
    if mean is None:
        mean = flat.mean(dim=0)
    return F.normalize(flat - mean, dim=1), mean


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of centred features (Roy & Vetterli, 2007).

    Near the feature dimension when the representation spreads over many directions, near 1 when it
    has collapsed to a line. Label-free, so it is a collapse signal the user can trust.
    """
    x = features.float()
    x = x - x.mean(dim=0)
    s = torch.linalg.svdvals(x)
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return float(entropy.exp())


def eval_indices(total: int, size: int, seed: int = 1234) -> torch.Tensor:
    """A fixed, seed-independent choice of `size` indices (all when size is 0), so runs share their bank."""
    if size <= 0 or size >= total:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:size].sort().values


SUBSET_SEED = 4321  # fixed, so runs that train on a subset of the same size see the same images


def chosen_images(config: TrainConfig, data: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which images a run uses, as positions in their splits: the training images (`subset` of them, the
    same for every run of that size), the kNN bank (training images) and the kNN queries (test images)."""
    train_idx = eval_indices(len(data.train_labels), config.subset, seed=SUBSET_SEED)
    bank_idx = eval_indices(len(data.train_labels), config.eval_bank_size)
    query_idx = eval_indices(len(data.test_labels), config.eval_query_size)
    return train_idx, bank_idx, query_idx


def pixel_knn_accuracy(
    bank_images: torch.Tensor,
    bank_labels: torch.Tensor,
    query_images: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    cache_file: Path | None = None,
    cache_key: str = "",
) -> float:
    """kNN accuracy on mean-centred raw pixels: the floor a learned representation has to beat.

    Computed once per data set and bank/query choice: results are kept in a small JSON file.
    """

    def measure() -> float:
        bank, mean = pixel_features(bank_images)
        queries, _ = pixel_features(query_images, mean)
        return knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, k, temperature)

    return measure() if cache_file is None else remembered(cache_file, cache_key, measure)
