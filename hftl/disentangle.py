"""Disentanglement: split a frozen backbone's features into two parts, one per factor of the data, and measure it.

Two factors of each example are known (e.g. the spoken word and the speaker's voice). The backbone's pooled
features (computed once and cached, ``hftl.features``) feed two projections, ``z_a = P_a x`` and ``z_b = P_b x``.
Each part is trained to predict its own factor with a head, while an adversary per part tries to predict the OTHER
factor from it (Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation": a gradient-reversal
layer; or a confusion term that pushes the adversary's answer towards uniform): the adversary learns to read the
other factor, and the projection learns to hide it. A split representation with adversaries is Mathieu et al. 2016
("Disentangling factors of variation in deep representations using adversarial training") and Lample et al. 2017
("Fader Networks"); here it sits on a frozen pretrained backbone, so it costs one backbone pass and seconds.

The measure does not trust the adversaries: after training, FRESH linear probes (scikit-learn's logistic
regression) are fit on each frozen part for each factor on train and scored on test, a 2x2 table of accuracies
beside chance (train's majority class scored on test); the same for the raw features, for the split trained with
``adversary_weight=0`` (what the adversaries remove), and for a split whose parts read the features with the other
factor erased in closed form (:class:`Eraser`, LEACE: Belrose et al. 2023). Adversaries that beat their own
adversary often leave the factor readable to a fresh probe (Elazar & Goldberg 2018, "Adversarial Removal of
Demographic Attributes from Text Data"; Ravfogel et al. 2020, "Null It Out"): on tests/test_disentangle.py's mixed
features, full-width parts, a fresh probe read factor b from z_a at 0.97-1.0 with adversaries (either kind, weight
1-3, 5-30 adversary steps) against 0.77-0.80 without, and at chance after erasure. A linear probe measures linear
decodability only.

Example:
    >>> data = factor_features(model, splits, processor, collate, "speaker", accelerator)  # doctest: +SKIP
    >>> result = disentangle(data, adversary_weight=1.0, seed=0)  # doctest: +SKIP
    >>> result["erasure"]["z_a"]["factor_b"], result["chance"]["factor_b"]  # doctest: +SKIP
    (0.14, 0.125)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hftl.data.labels import is_missing, label_namer, ordered_names
from hftl.data.sources import DataError

PARTS = ("z_a", "z_b")
FACTORS = ("factor_a", "factor_b")


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient times ``-weight`` backward (Ganin & Lempitsky 2015's gradient-reversal layer).

    Example:
        >>> x = torch.ones(2, requires_grad=True); grad_reverse(x, 0.5).sum().backward(); x.grad
        tensor([-0.5000, -0.5000])
    """
    return _Reverse.apply(x, float(weight))


def dann_schedule(progress: float) -> float:
    """Ganin & Lempitsky's ramp of the reversal weight, 0 at the start to ~1 at the end: ``2 / (1 + e^(-10 p)) - 1``
    for ``progress`` p in [0, 1], so the adversaries learn to read before the projections are pushed."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class SplitModel(nn.Module):
    """Two linear projections of ``width`` features to ``dim`` each (``z_a``, ``z_b``), a head per part for its own
    factor (``n_a``, ``n_b`` classes) and a linear adversary per part for the other factor."""

    def __init__(self, width: int, dim: int, n_a: int, n_b: int) -> None:
        super().__init__()
        self.proj_a, self.proj_b = nn.Linear(width, dim), nn.Linear(width, dim)
        # each part standardized per unit (batch statistics, no scale to learn): a factor cannot hide in a direction
        # of tiny variance that the adversary's bounded weights miss but a probe on standardized parts still reads
        self.norm_a, self.norm_b = nn.BatchNorm1d(dim, affine=False), nn.BatchNorm1d(dim, affine=False)
        self.head_a, self.head_b = nn.Linear(dim, n_a), nn.Linear(dim, n_b)
        self.adv_a, self.adv_b = nn.Linear(dim, n_b), nn.Linear(dim, n_a)  # adv_a reads factor b from z_a

    def parts(self, x: torch.Tensor, x_b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_a, z_b)``, each ``[n, dim]``, of features ``x`` ``[n, width]`` (``x_b``: part b's own input, e.g. the
        features with factor a erased; default ``x``)."""
        return self.norm_a(self.proj_a(x)), self.norm_b(self.proj_b(x if x_b is None else x_b))

    def losses(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: float,
               mode: str = "confusion", x_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The projections' and heads' loss terms: the heads' cross-entropies (own factor), and per adversary (other
        factor) either its cross-entropy through gradient reversal by ``weight`` (``mode="reverse"``) or ``weight``
        x the cross-entropy of its prediction against the uniform distribution (``"confusion"``)."""
        z_a, z_b = self.parts(x, x_b)
        ce = nn.functional.cross_entropy
        terms = {"head_a": ce(self.head_a(z_a), a), "head_b": ce(self.head_b(z_b), b)}
        if mode == "reverse":
            terms["adv_a"] = ce(self.adv_a(grad_reverse(z_a, weight)), b)
            terms["adv_b"] = ce(self.adv_b(grad_reverse(z_b, weight)), a)
        else:  # mean -log p over the classes: least when the adversary's answer is uniform, whatever the label
            terms["adv_a"] = -weight * self.adv_a(z_a).log_softmax(-1).mean()
            terms["adv_b"] = -weight * self.adv_b(z_b).log_softmax(-1).mean()
        return terms


@dataclass
class FactorData:
    """Features and both factors' class ids per split (``features[split]``: float ``[n, width]``; ``a[split]``,
    ``b[split]``: int64 ``[n]``), and each factor's class names (from train)."""

    features: dict[str, np.ndarray]
    a: dict[str, np.ndarray]
    b: dict[str, np.ndarray]
    names_a: list[str]
    names_b: list[str]


def check_factors(splits, label_column: str, factor_column: str, files: dict[str, str] | None = None) -> None:
    """Checks before any compute on splits from ``hftl.load_splits`` (factor a, ``data.label_column``, is their
    ``label``; factor b is the column ``factor_column``): ConfigError when both name the same column; DataError (one
    line naming the column, split and fix) when factor b is missing from a split or has an empty cell, when a factor
    has one value in train, or when a split holds a value of a factor that train never shows (no probe can learn it).
    """
    from hftl.config import ConfigError

    if factor_column == label_column:
        raise ConfigError(f"disentangle.factor_column={factor_column!r} is data.label_column too: set it to the "
                          f"column of the second factor (e.g. speaker), different from the first")
    where = {s: f" ({files[s]})" if files and s in files else "" for s in splits}
    for split, ds in splits.items():
        if factor_column not in ds.column_names:
            shown = [label_column if c == "label" else c for c in ds.column_names]
            raise DataError(f"disentangle.factor_column={factor_column!r} is not a column of split {split!r}"
                            f"{where[split]}; its columns are {shown}: set disentangle.factor_column to the second "
                            f"factor's column")
        empty = [i for i, v in enumerate(ds[factor_column]) if is_missing(v)]
        if empty:
            raise DataError(f"disentangle.factor_column={factor_column!r} has {len(empty)} empty cells in split "
                            f"{split!r}{where[split]} (first data row {empty[0] + 1}): fill them or drop those rows; "
                            f"every example needs both factors")
    for key, column, shown in (("data.label_column", "label", label_column),
                               ("disentangle.factor_column", factor_column, factor_column)):
        name = _namer(splits["train"], column)
        train = {name(v) for v in splits["train"][column]}
        if len(train) < 2:
            raise DataError(f"{key}={shown!r} has one value ({next(iter(train))!r}) in train: a factor needs at "
                            f"least 2 values to be predicted; set {key} to another column")
        for split, ds in splits.items():
            unseen = sorted({name(v) for v in ds[column]} - train)
            if unseen:
                raise DataError(f"{key}={shown!r} has values in split {split!r}{where[split]} that train never "
                                f"shows ({unseen[:5]}): no probe can learn them; put every value in train")


def _namer(ds, column: str):
    """A cell's class name: a ClassLabel's name, else hftl's label text (hftl.data.labels)."""
    feature = ds.features[column]
    if hasattr(feature, "names"):
        return feature.int2str
    return label_namer(ds[column])


def codes(splits, column: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Class ids of ``column`` per split (int64 ``[n]``) and the class names, in hftl's label order (numbers
    numerically), from train. Class labels (ClassLabel) keep their own ids."""
    feature = splits["train"].features[column]
    if hasattr(feature, "names"):
        return {s: np.asarray(ds[column], dtype=np.int64) for s, ds in splits.items()}, list(feature.names)
    name = label_namer(splits["train"][column])
    names = ordered_names(splits["train"][column], name)
    index = {n: i for i, n in enumerate(names)}
    return {s: np.asarray([index[name(v)] for v in ds[column]], dtype=np.int64) for s, ds in splits.items()}, names


def factor_features(model, splits, processor, collate, factor_b: str, accelerator, *, max_length: int = 128,
                    data_cfg=None, batch_size: int = 128) -> FactorData:
    """The backbone's pooled features of every split (``hftl.features.cached_features``: one pass, then the cache)
    with both factors' ids aligned row by row: ``label`` is factor a; ``factor_b`` names the column of factor b.
    Rows the modality's encoder skips (an unreadable clip) are dropped from features and factors alike."""
    from hftl.data import encode
    from hftl.features import cached_features

    a, names_a = codes(splits, "label")
    b, names_b = codes(splits, factor_b)
    # the row index rides as the label through encoding and the feature pass: skipped rows cannot shift the factors
    indexed = type(splits)({s: ds.remove_columns("label").add_column("label", list(range(len(ds))))
                            for s, ds in splits.items()})
    encoded, _ = encode(indexed, processor, data_cfg, max_length=max_length)
    model.to(accelerator.device)
    feats, fa, fb = {}, {}, {}
    for split, ds in encoded.items():
        out = cached_features(model, ds, collate, accelerator, batch_size)
        rows = out["labels"].numpy().astype(np.int64)
        feats[split], fa[split], fb[split] = out["features"].numpy().astype(np.float32), a[split][rows], b[split][rows]
    return FactorData(feats, fa, fb, names_a, names_b)


class Standardizer:
    """Train's mean and standard deviation per feature (constant features keep a scale of 1)."""

    def __init__(self, train: np.ndarray) -> None:
        self.mean = train.mean(0).astype(np.float32)
        self.std = np.where(train.std(0) > 1e-8, train.std(0), 1.0).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.as_tensor(self.mean), "std": torch.as_tensor(self.std)}


def standardize(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every split centred and scaled by train's mean and standard deviation per feature (constant ones left at 1)."""
    scale = Standardizer(features["train"])
    return {s: scale(f) for s, f in features.items()}


def train_split(x: np.ndarray, a: np.ndarray, b: np.ndarray, *, dim: int = 32, adversary_weight: float = 1.0,
                epochs: int = 100, lr: float = 1e-3, batch_size: int = 64, adversary_steps: int = 1,
                mode: str = "confusion", adversary_lr: float = 0.0, seed: int = 0,
                x_b: np.ndarray | None = None) -> tuple[SplitModel, dict]:
    """Train a :class:`SplitModel` on standardized features ``x`` ``[n, width]`` and factor ids ``a``, ``b`` ``[n]``.

    Each step: the adversaries take ``adversary_steps`` updates on their own loss (projections fixed), then every
    part takes one on ``head + adversary`` losses with the adversaries' gradient into the projections reversed and
    scaled by ``adversary_weight`` x :func:`dann_schedule` (0: plain heads, the adversaries only watch). AdamW.
    Returns the model (eval mode) and a history: final losses per term, steps, seconds. Raises RuntimeError naming
    ``disentangle.lr`` for a non-finite loss."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, at, bt = torch.as_tensor(x), torch.as_tensor(a), torch.as_tensor(b)
    xbt = xt if x_b is None else torch.as_tensor(x_b)
    model = SplitModel(x.shape[1], dim, int(a.max()) + 1, int(b.max()) + 1)
    advs = [p for m in (model.adv_a, model.adv_b) for p in m.parameters()]
    rest = [p for n, p in model.named_parameters() if not n.startswith("adv_")]
    opt, opt_adv = torch.optim.AdamW(rest, lr=lr), torch.optim.AdamW(advs, lr=adversary_lr or lr, weight_decay=0.0)
    steps_per_epoch, start = max(1, math.ceil(len(a) / batch_size)), time.perf_counter()
    total, step, last = epochs * steps_per_epoch, 0, {}
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(a), generator=gen).split(batch_size):
            xa_, xb_, ab, bb = xt[idx], xbt[idx], at[idx], bt[idx]
            for _ in range(adversary_steps):  # the adversaries catch up with the current projections
                with torch.no_grad():
                    z_a, z_b = model.parts(xa_, xb_)
                ce = nn.functional.cross_entropy
                adv = ce(model.adv_a(z_a), bb) + ce(model.adv_b(z_b), ab)
                opt_adv.zero_grad()
                adv.backward()
                opt_adv.step()
            weight = adversary_weight * dann_schedule(step / max(1, total - 1))
            terms = model.losses(xa_, ab, bb, weight, mode, xb_)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise RuntimeError(f"disentanglement diverged at step {step} (loss {loss.item()}): lower "
                                   f"disentangle.lr (now {lr:g}) or check the features for NaN or infinite values")
            opt.zero_grad()
            opt_adv.zero_grad()
            loss.backward()
            opt.step()  # the adversaries' own step is the one above: here they only pass the reversed gradient
            step += 1
            last = {k: v.item() for k, v in terms.items()}
    model.eval()
    return model, {"steps": step, "seconds": time.perf_counter() - start, "final_loss": last}


class Eraser:
    """Closed-form linear erasure of one factor (LEACE: Belrose et al. 2023, "LEACE: Perfect linear concept erasure
    in closed form"): ``x -> x - P (x - mean)`` with ``P`` the oblique projection, in train's whitened coordinates,
    onto the span of the features' cross-covariance with the factor's one-hot code. After it every class of the
    factor has the same mean feature on train, so no linear classifier does better there than a constant; any linear
    map of the erased features (a projection ``z``) keeps that. ``ridge`` regularizes the covariance (a fraction of its
    mean eigenvalue) where features outnumber examples."""

    def __init__(self, x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> None:
        x = x.astype(np.float64)
        self.mean = x.mean(0)
        xc = x - self.mean
        onehot = np.eye(int(y.max()) + 1)[y]
        cov = xc.T @ xc / len(x)
        cov += ridge * np.trace(cov) / len(cov) * np.eye(len(cov))
        vals, vecs = np.linalg.eigh(cov)
        whiten = vecs @ np.diag(vals ** -0.5) @ vecs.T
        unwhiten = vecs @ np.diag(vals ** 0.5) @ vecs.T
        cross = xc.T @ (onehot - onehot.mean(0)) / len(x)  # [width, classes]
        u, sv, _ = np.linalg.svd(whiten @ cross, full_matrices=False)
        basis = u[:, sv > 1e-10 * max(sv.max(), 1e-300)]
        self.proj = (unwhiten @ basis @ basis.T @ whiten).astype(np.float32)  # [width, width]
        self.mean = self.mean.astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``mean`` ``[width]`` and ``proj`` ``[width, width]``: erased = x - (x - mean) @ proj.T."""
        return {"mean": torch.as_tensor(self.mean), "proj": torch.as_tensor(self.proj)}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Erased features, ``[n, width]`` like ``x``."""
        return (x - (x - self.mean) @ self.proj.T).astype(np.float32)


@torch.no_grad()
def parts_of(model: SplitModel, features: dict[str, np.ndarray],
             features_b: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``{"z_a": {split: [n, dim]}, "z_b": {...}}``: each split's features through the frozen projections
    (``features_b``: part b's own inputs, as in :func:`train_split`)."""
    out = {p: {} for p in PARTS}
    for split, x in features.items():
        z_a, z_b = model.parts(torch.as_tensor(x), None if features_b is None else torch.as_tensor(features_b[split]))
        out["z_a"][split], out["z_b"][split] = z_a.numpy(), z_b.numpy()
    return out


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                   c: float = 1.0, seed: int = 0) -> float:
    """Test accuracy of a fresh L2 logistic regression (scikit-learn, inverse strength ``c``) fit on ``train_x``
    ``[n, d]`` -> ``train_y`` ``[n]`` after standardizing by train (what a linear read-out of the part can find)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train_x.mean(0), train_x.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    clf.fit((train_x - mean) / std, train_y)
    return float((clf.predict((test_x - mean) / std) == test_y).mean())


def knn_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                       k: int = 5) -> float:
    """Test accuracy of a ``k``-nearest-neighbour vote (Euclidean, on features standardized by train): a read-out
    that is not linear, for what a linear probe cannot see (a factor erased linearly may still be there)."""
    from sklearn.neighbors import KNeighborsClassifier

    mean, std = train_x.mean(0), train_x.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(train_y))).fit((train_x - mean) / std, train_y)
    return float((clf.predict((test_x - mean) / std) == test_y).mean())


def chance(train_y: np.ndarray, test_y: np.ndarray) -> float:
    """Accuracy on test of always answering train's most frequent class."""
    return float((test_y == np.bincount(train_y).argmax()).mean())


def factor_table(parts: dict[str, dict[str, np.ndarray]], data: FactorData, *, split: str = "test", c: float = 1.0,
                 seed: int = 0, probe: str = "linear") -> dict[str, dict[str, float]]:
    """``{part: {"factor_a": acc, "factor_b": acc}}``: a fresh probe per part and factor, fit on train, scored on
    ``split``. ``parts``: part name -> split -> features ``[n, d]``. ``probe``: ``linear`` (:func:`probe_accuracy`)
    or ``knn`` (:func:`knn_probe_accuracy`)."""
    ys = {"factor_a": data.a, "factor_b": data.b}

    def score(x, f):
        if probe == "knn":
            return knn_probe_accuracy(x["train"], ys[f]["train"], x[split], ys[f][split])
        return probe_accuracy(x["train"], ys[f]["train"], x[split], ys[f][split], c=c, seed=seed)

    return {part: {f: score(x, f) for f in FACTORS} for part, x in parts.items()}


ARMS = ("raw", "plain", "adversarial", "erasure")


def disentangle(data: FactorData, *, dim: int = 32, adversary_weight: float = 1.0, epochs: int = 100,
                lr: float = 1e-3, batch_size: int = 64, adversary_steps: int = 5, adversary_lr: float = 1e-2,
                mode: str = "confusion", probe_c: float = 1.0, seed: int = 0, split: str = "test") -> dict:
    """Every arm on ``data`` (standardized by train), each measured by fresh probes on ``split``:

    - ``raw``: the backbone's features themselves (one row: what each factor's probe finds in them);
    - ``plain``: the split trained with its heads alone (``adversary_weight=0``): what a split without adversaries
      leaves in each part;
    - ``adversarial``: the split with adversaries (``mode``: ``reverse``, Ganin & Lempitsky's gradient reversal of
      the adversary's cross-entropy; ``confusion``, the projection pushes the adversary's answer towards uniform);
    - ``erasure``: the split trained with heads alone on inputs whose other factor is erased in closed form
      (:class:`Eraser`): part a reads the features with factor b erased, and part b those with factor a erased.

    Returns numbers only but for ``models``: ``{"chance": {factor: acc}, "raw": {factor: acc}, arm: {part: {factor:
    acc}} for the three split arms, "knn": the same tables read by 5-nearest-neighbour probes, "train": {arm:
    history}, "models": {arm: SplitModel, "erase_a": Eraser, "erase_b": Eraser, "standardize": Standardizer}}``
    (every model and eraser reads features standardized by train); pop ``models`` before writing JSON."""
    scale = Standardizer(data.features["train"])
    feats = {s: scale(x) for s, x in data.features.items()}
    ya, yb = data.a["train"], data.b["train"]
    settings = dict(dim=dim, epochs=epochs, lr=lr, batch_size=batch_size, adversary_steps=adversary_steps,
                    adversary_lr=adversary_lr, mode=mode, seed=seed)
    erase_a, erase_b = Eraser(feats["train"], ya), Eraser(feats["train"], yb)
    without_b = {s: erase_b(x) for s, x in feats.items()}  # part a's input: factor b erased
    without_a = {s: erase_a(x) for s, x in feats.items()}
    runs = {"plain": (feats, None, 0.0), "adversarial": (feats, None, adversary_weight),
            "erasure": (without_b, without_a, 0.0)}
    out = {"chance": {"factor_a": chance(ya, data.a[split]), "factor_b": chance(yb, data.b[split])},
           "raw": factor_table({"raw": feats}, data, split=split, c=probe_c, seed=seed)["raw"],
           "train": {}, "models": {"standardize": scale, "erase_a": erase_a, "erase_b": erase_b},
           "knn": {"raw": factor_table({"raw": feats}, data, split=split, probe="knn")["raw"]}}
    for arm, (x_a, x_b, weight) in runs.items():
        model, history = train_split(x_a["train"], ya, yb, adversary_weight=weight,
                                     x_b=None if x_b is None else x_b["train"], **settings)
        parts = parts_of(model, x_a, x_b)
        out[arm] = factor_table(parts, data, split=split, c=probe_c, seed=seed)
        out["knn"][arm] = factor_table(parts, data, split=split, probe="knn")
        out["train"][arm], out["models"][arm] = history, model
    return out
