"""Choose the source model: rank candidate backbones for a labelled target before any fine-tuning.

    hftl select --config recipes/configs/text/minilm-rt-linear_probe.yaml \\
        --candidates sentence-transformers/all-MiniLM-L6-v2,runs/minilm-2layers output_dir=runs/select
    hftl select ... --finetune linear_probe     # then fine-tune each, and rank-correlate scores with accuracy

Each candidate costs one frozen forward pass over the train split (``data.max_train_samples`` is the sample, drawn
stratified), through the feature cache that the ``linear_probe`` strategy keeps (``hftl.features``): the same model,
pooling, data settings and ``model.max_length`` then give the chosen candidate's probe its train features for free.
On those features three scores, each with its cost (seconds, examples):

- **LogME** (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"): the log
  evidence per example of a Bayesian linear model from the features to each class's one-hot target, with the prior
  and noise precisions (alpha, beta) set by MacKay's fixed point, averaged over the classes. Higher is better.
- **kNN accuracy**: leave-one-out majority vote of the ``select.knn_k`` nearest train examples by cosine similarity.
- **LEEP** (Nguyen et al. 2020, "LEEP: A New Measure to Evaluate Transferability of Learned Representations"): the
  mean log-likelihood of the target labels through the source head's label distribution; only for a candidate that
  has a source classification head (one more forward pass with it), else skipped with the reason.

A candidate that fails to load or run is named in the table with its error, and the others are still ranked.
Writes ``output_dir/`` (new or empty, or an earlier run there with ``overwrite=true``; hftl/rundir.py):
``config.yaml``, ``selection.json`` (strict JSON), and with ``select.finetune`` each candidate's run directory under
``finetune/`` and ``selection.png`` (each score against the measured test metric, Kendall's tau in the title).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

SCORES = ("logme", "knn", "leep")
_SOURCE_HEADS = {"ForSequenceClassification": "AutoModelForSequenceClassification",
                 "ForImageClassification": "AutoModelForImageClassification",
                 "ForAudioClassification": "AutoModelForAudioClassification"}


def _evidence_one(x: np.ndarray, rest: float, sigma: np.ndarray, n: int, max_iter: int, tol: float) -> float:
    """Maximised log evidence / n of one target ``t``, given its projection ``x = U^T t`` on the features' left
    singular vectors, ``rest = |t|^2 - |x|^2`` (its part outside their span) and the nonzero eigenvalues ``sigma``
    (s^2) of F^T F.

    MacKay's updates ``alpha = gamma / |m|^2``, ``beta = (n - gamma) / |t - F m|^2`` depend on alpha and beta only
    through ``lam = alpha / beta``, so the fixed point is iterated on ``lam`` (as LogME's own code does). ``lam`` is
    kept within 1e-10..1e10 of the largest eigenvalue: where the optimum lies at a boundary (features that explain
    nothing: alpha -> inf) the evidence has converged there to 1e-10, and everything scales with the features, so
    a rescaled F gives the same evidence. With ``alpha + beta sigma = alpha (1 + sigma / lam)`` the log determinant
    of ``alpha I + beta F^T F`` cancels ``d/2 log alpha`` but for ``sum log1p(sigma / lam)``: no overflow.
    """
    if not len(sigma):  # features that are all zero: t is noise alone, N(0, I / beta)
        return -0.5 * (math.log(2 * math.pi * max(rest, 1e-300) / n) + 1)
    low, high, total = 1e-10 * sigma.max(), 1e10 * sigma.max(), float(x @ x) + rest

    def terms(lam: float) -> tuple[float, float, float]:
        gamma = float((sigma / (sigma + lam)).sum())  # effective number of well-determined weights
        mm = float((sigma * (x / (sigma + lam)) ** 2).sum())  # |m|^2, m the posterior mean of the weights
        res = max(float(((lam * x / (sigma + lam)) ** 2).sum()) + rest, 1e-12 * total)  # |t - F m|^2
        return gamma, mm, res

    lam = float(np.clip(sigma.mean(), low, high))
    for _ in range(max_iter):
        gamma, mm, res = terms(lam)
        new = high if mm <= 0 else float(np.clip(gamma / mm * res / max(n - gamma, 1e-12), low, high))
        done = abs(new - lam) <= tol * lam
        lam = new
        if done:
            break
    gamma, mm, res = terms(lam)
    beta = max(n - gamma, 1e-12) / res
    alpha = lam * beta
    evidence = (n / 2 * math.log(beta) - alpha / 2 * mm - beta / 2 * res - 0.5 * float(np.log1p(sigma / lam).sum())
                - n / 2 * math.log(2 * math.pi))
    if len(sigma) == n:  # F F^T is invertible (n <= rank): the supremum may lie at beta -> inf (no noise), which the
        # iteration only creeps towards; there t ~ N(0, F F^T / alpha), maximised over alpha in closed form
        alpha = n / float((x**2 / sigma).sum())
        limit = n / 2 * math.log(alpha) - 0.5 * float(np.log(sigma).sum()) - n / 2 - n / 2 * math.log(2 * math.pi)
        evidence = max(evidence, limit)
    return evidence / n


def logme(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *, max_iter: int = 1000,
          tol: float = 1e-8) -> float:
    """LogME (You et al. 2021): mean over classes of the maximised log evidence per example of the linear model
    ``t_c = F w + noise`` (``w ~ N(0, I/alpha)``, noise ``N(0, 1/beta)``), ``t_c`` the one-vs-rest one-hot target.

    ``features``: (n, d) floats; ``labels``: (n,) class ids. alpha and beta follow MacKay's fixed point (the paper's
    Algorithm 1), on one SVD of the features shared by all classes: O(n d min(n, d)). Higher is better; values are
    comparable between candidates on the same labels. Raises ValueError for fewer than 2 examples or a non-finite
    feature.

    Example:
        >>> round(logme(np.eye(4)[[0, 1, 2, 3] * 5] + 0.01, np.array([0, 1, 2, 3] * 5)), 2) > 0
        True
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
        raise ValueError(f"logme needs (n, d) features and n labels, n >= 2; got {f.shape} and {y.shape}")
    if not np.isfinite(f).all():
        raise ValueError("logme: the features hold NaN or infinite values")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps  # the numerical rank
    u, sigma = u[:, keep], s[keep] ** 2
    values = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        x = u.T @ t
        values.append(_evidence_one(x, max(float(t @ t - x @ x), 0.0), sigma, n, max_iter, tol))
    return float(np.mean(values))


def knn_accuracy(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, k: int = 5,
                 chunk: int = 1024) -> float:
    """Leave-one-out accuracy of a majority vote among the ``k`` most cosine-similar other examples; ties go to the
    class whose voters are more similar in sum. ``features`` (n, d), ``labels`` (n,); memory O(chunk x n)."""
    f = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    n = len(f)
    if n < 2:
        raise ValueError("knn_accuracy needs at least 2 examples")
    k = min(k, n - 1)
    f = torch.nn.functional.normalize(f, dim=1)
    classes = int(y.max()) + 1
    correct = 0
    for start in range(0, n, chunk):
        sim = f[start:start + chunk] @ f.T
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = -math.inf  # not its own neighbour
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), classes).scatter_add_(1, y[idx], torch.ones_like(top))
        votes += 1e-6 * torch.zeros(len(sim), classes).scatter_add_(1, y[idx], top.clamp(-1, 1) + 1)
        correct += int((votes.argmax(1) == y[start:start + chunk]).sum())
    return correct / n


def leep(source_probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """LEEP (Nguyen et al. 2020): ``mean_i log sum_z P(y_i | z) theta_z(x_i)`` with ``theta(x)`` the source head's
    softmax over its Z labels, ``P(y | z) = P(y, z) / P(z)`` the empirical joint of target and source labels over the
    n examples. ``source_probs`` (n, Z) rows summing to 1, ``labels`` (n,). At most 0; higher is better."""
    theta = np.asarray(source_probs, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    classes = np.unique(y)
    joint = np.stack([theta[y == c].sum(0) for c in classes]) / len(y)  # (classes, Z): P(y, z)
    conditional = joint / np.clip(joint.sum(0, keepdims=True), 1e-300, None)  # P(y | z)
    index = np.searchsorted(classes, y)
    likelihood = (theta * conditional[index]).sum(1)  # sum_z P(y_i | z) theta_z(x_i)
    return float(np.log(np.clip(likelihood, 1e-300, None)).mean())


def kendall(scores: list[float | None], measured: list[float | None]) -> float | None:
    """Kendall's tau-b (scipy) over the candidates that have both numbers; None for fewer than 2 or a constant."""
    from scipy.stats import kendalltau

    pairs = [(s, m) for s, m in zip(scores, measured, strict=True) if s is not None and m is not None]
    if len(pairs) < 2:
        return None
    tau = kendalltau([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return None if tau is None or not math.isfinite(tau) else float(tau)


def slug(name: str) -> str:
    """A folder name for a candidate: its last path parts, safe characters only."""
    parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".", "..")][-2:]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "--".join(parts)) or "candidate"


def short_names(names: list[str]) -> list[str]:
    """Labels for the figure: each candidate's last path part, or as many last parts as tell it from the others
    (hftl runs all end in ``model``, masked stages in ``pretrained``); at most 32 characters, the end kept."""
    parts = [[p for p in re.split(r"[\\/]+", n) if p not in ("", ".")] or [n] for n in names]
    labels = []
    for i, own in enumerate(parts):
        for k in range(1, len(own) + 1):
            label = "/".join(own[-k:])
            if all("/".join(other[-k:]) != label for j, other in enumerate(parts) if j != i):
                break
        labels.append(label if len(label) <= 32 else "..." + label[-29:])
    return labels


def _describe(err: BaseException) -> str:
    """One line for a candidate's failure: hftl's own errors as written (they name the fix), others with their type."""
    line = " ".join(str(err).split())[:400]
    return line if type(err).__module__.startswith("hftl") else f"{type(err).__name__}: {line}"


def source_probabilities(cfg, name: str, encoded, collate, device) -> tuple[torch.Tensor | None, str]:
    """The source head's softmax over its labels for each row of ``encoded`` (dataset order), or (None, the reason
    it has no source head). A run of hftl's (``model_type: hftl``) and a checkpoint whose ``architectures`` name a
    ``...For{Sequence,Image,Audio}Classification`` class have one; a bare or masked-LM checkpoint does not."""
    import transformers
    from torch.utils.data import DataLoader

    from hftl.modeling import HftlForClassification
    from hftl.models import model_config, resolve

    kwargs = resolve(name, cfg.model.revision, cfg.model.trust_remote_code)
    config = model_config(name, kwargs)
    if getattr(config, "model_type", None) == "hftl":
        cls = HftlForClassification
    else:
        archs = list(getattr(config, "architectures", None) or [])
        suffix = next((s for a in archs for s in _SOURCE_HEADS if a.endswith(s)), None)
        if suffix is None or len(getattr(config, "id2label", None) or {}) < 2:
            return None, (f"no source classification head: its config declares {archs or 'no architecture'} (LEEP "
                          "needs the label distribution of a source task)")
        cls = getattr(transformers, _SOURCE_HEADS[suffix])
    model = cls.from_pretrained(name, dtype=torch.float32, **kwargs).to(device).eval()
    loader = DataLoader(encoded, batch_size=cfg.train.eval_batch_size, collate_fn=collate)
    probs = []
    with torch.no_grad():
        for batch in loader:
            inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "length")}
            probs.append(model(**inputs).logits.float().softmax(-1).cpu())
    return torch.cat(probs), ""


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def _score(cfg, name: str, splits, labels: list[str], accelerator) -> dict:
    """Load ``name``, one frozen pass over the train split through the feature cache, then the scores."""
    from datasets import DatasetDict

    import hftl
    from hftl.data import encode
    from hftl.features import cache_dir
    from hftl.models import ModelNotFoundError, check_max_length
    from hftl.train import eval_batch

    start = time.perf_counter()
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise ModelNotFoundError(f"{name} does not exist: give a model folder or a Hub id")
    processor = hftl.load_processor(name, cfg.model.revision, cfg.model.trust_remote_code)
    check_max_length(dataclasses.replace(cfg.model, name=name), processor)
    model = hftl.load_classifier(  # as the linear_probe recipe loads it: the same features, the same cache key
        name, len(labels), id2label=dict(enumerate(labels)), revision=cfg.model.revision, pooling=cfg.model.pooling,
        head_hidden=cfg.model.head_hidden, head_dropout=cfg.model.head_dropout,
        trust_remote_code=cfg.model.trust_remote_code, dtype=cfg.model.dtype).to(accelerator.device)
    load_seconds = time.perf_counter() - start
    (encoded, _), encode_seconds = _timed(encode, DatasetDict(train=splits["train"]), processor, cfg.data,
                                          max_length=cfg.model.max_length, augment=False, seed=cfg.train.seed)
    collate = hftl.collator_for(processor)
    before = set(cache_dir().glob("*.safetensors"))
    feats, pass_seconds = _timed(hftl.cached_features, model, encoded["train"], collate, accelerator,
                                 eval_batch(cfg.train, accelerator))
    from_cache = not (set(cache_dir().glob("*.safetensors")) - before)
    f, y = feats["features"].numpy(), feats["labels"].numpy()
    value_logme, logme_seconds = _timed(logme, f, y)
    value_knn, knn_seconds = _timed(knn_accuracy, f, y, cfg.select.knn_k)
    cost = {"load_seconds": load_seconds, "encode_seconds": encode_seconds,
            "features": {"seconds": pass_seconds, "examples": len(y), "from_cache": from_cache,
                         "width": int(f.shape[1])},
            "logme": {"seconds": logme_seconds, "examples": len(y)},
            "knn": {"seconds": knn_seconds, "examples": len(y), "k": min(cfg.select.knn_k, len(y) - 1)}}
    scores = {"logme": value_logme, "knn": value_knn, "leep": None}
    del model
    if cfg.select.leep:
        (probs, reason), leep_seconds = _timed(source_probabilities, cfg, name, encoded["train"], collate,
                                               accelerator.device)
        cost["leep"] = {"seconds": leep_seconds, "examples": len(y)} if probs is not None else {"skipped": reason}
        if probs is not None:
            scores["leep"], seconds = _timed(leep, probs.numpy(), y)
            cost["leep"]["seconds"] += seconds
    else:
        cost["leep"] = {"skipped": "select.leep=false"}
    return {"scores": scores, "cost": cost}


def score_candidate(cfg, name: str, splits, labels: list[str], accelerator) -> dict:
    """``{"name", "scores", "cost"}`` for one candidate, or ``{"name", "error"}`` when it fails to load or run: a
    failing candidate is named, never the end of the selection."""
    try:
        return {"name": name, **_score(cfg, name, splits, labels, accelerator)}
    except Exception as err:  # noqa: BLE001 - named in the table and the JSON; the other candidates still run
        accelerator.print(f"{name}: not scored: {_describe(err)}")
        return {"name": name, "error": _describe(err)}


def finetune_candidate(cfg, name: str, output_dir: Path) -> dict:
    """Run the fine-tuning recipe on ``name`` with ``select.finetune`` (its own run directory ``output_dir``); the
    test metric ``train.metric_for_best`` and the seconds, or the error."""
    from hftl.recipes import finetune

    sub = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name), output_dir=str(output_dir),
                              strategy=dataclasses.replace(cfg.strategy, name=cfg.select.finetune))
    start = time.perf_counter()
    try:
        metrics = finetune.main(sub)
    except Exception as err:  # noqa: BLE001 - one candidate's failure (divergence included) is reported, not fatal
        return {"error": _describe(err), "seconds": time.perf_counter() - start, "output_dir": str(output_dir)}
    return {"test": metrics["test"], "measured": metrics["test"].get(cfg.train.metric_for_best),
            "seconds": time.perf_counter() - start, "feature_seconds": metrics["train"]["feature_seconds"],
            "output_dir": str(output_dir)}


def rankings(rows: list[dict]) -> dict[str, list[str]]:
    """Per score, the scored candidates from best to worst (those without the score left out)."""
    scored = [r for r in rows if "scores" in r]
    return {s: [r["name"] for r in sorted((r for r in scored if r["scores"][s] is not None),
                                          key=lambda r, s=s: -r["scores"][s])] for s in SCORES}


def table(result: dict) -> str:
    """The terminal table: candidates by LogME, each score and its cost, the measured metric when there is one,
    then the candidates that failed with their error, and Kendall's tau of each score with the measured metric."""
    metric = result.get("finetune", {}).get("metric")
    head = ["rank", "candidate", "LogME", "kNN acc", "LEEP", "pass s (n)", "LogME s", "kNN s", "LEEP s"]
    head += [f"{result['finetune']['strategy']} test {metric}", "fine-tune s"] if metric else []
    order = {n: i for i, n in enumerate(result["ranking"]["logme"])}
    lines = []
    for row in sorted((r for r in result["candidates"] if "scores" in r), key=lambda r: order.get(r["name"], 1e9)):
        s, c = row["scores"], row["cost"]
        leep_s = f"{c['leep']['seconds']:.2f}" if "seconds" in c["leep"] else "skipped"
        cells = [str(order[row["name"]] + 1), row["name"], f"{s['logme']:.4f}", f"{s['knn']:.3f}",
                 "-" if s["leep"] is None else f"{s['leep']:.4f}",
                 f"{c['features']['seconds']:.1f} ({c['features']['examples']})"
                 + (" cached" if c["features"]["from_cache"] else ""),
                 f"{c['logme']['seconds']:.2f}", f"{c['knn']['seconds']:.2f}", leep_s]
        if metric:
            ft = row.get("finetune", {})
            cells += ["failed" if "error" in ft else f"{ft.get('measured', float('nan')):.4f}",
                      f"{ft.get('seconds', 0):.0f}"]
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(cells, widths, strict=True)).rstrip() for cells in [head, *lines]]
    out += [f"-  {r['name']}: not scored: {r['error']}" for r in result["candidates"] if "error" in r]
    out += [f"-  {r['name']}: fine-tuning failed: {r['finetune']['error']}"
            for r in result["candidates"] if "error" in r.get("finetune", {})]
    skipped = {r["cost"]["leep"]["skipped"] for r in result["candidates"] if "skipped" in r.get("cost", {}).get(
        "leep", {})}
    out += [f"LEEP skipped: {reason}" for reason in sorted(skipped)]
    if "kendall_tau" in result:
        out.append("Kendall's tau with the measured metric: " + ", ".join(
            f"{s} {'n/a' if t is None else f'{t:+.3f}'}" for s, t in result["kendall_tau"].items()))
    sec = result["seconds"]
    out.append(f"selection {sec['selection']:.1f} s" + (f"; fine-tuning every candidate {sec['finetune']:.1f} s"
                                                        if "finetune" in sec else ""))
    return "\n".join(out)


def plot_selection(result: dict, path: str | Path) -> None:
    """Each score (one panel each, where any candidate has it) against the measured metric, tau in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in result["candidates"] if r.get("finetune", {}).get("measured") is not None]
    panels = [s for s in SCORES if any(r["scores"][s] is not None for r in rows)]
    fig = Figure(figsize=(4.2 * max(len(panels), 1), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    labels = short_names([r["name"] for r in rows])  # four hftl runs are not four points named "model"
    names = {"logme": "LogME", "knn": f"kNN accuracy (k={result['knn_k']})", "leep": "LEEP"}
    for i, score in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        points = [(r["scores"][score], r["finetune"]["measured"], label) for r, label in zip(rows, labels, strict=True)
                  if r["scores"][score] is not None]
        ax.scatter([p[0] for p in points], [p[1] for p in points])
        for x, y, label in points:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.margins(x=0.25)  # room for the names
        tau = result["kendall_tau"].get(score)
        ax.set_title(f"{names[score]}: Kendall's tau {'n/a' if tau is None else f'{tau:+.2f}'}", fontsize=9)
        ax.set_xlabel(names[score])
        ax.set_ylabel(f"test {result['finetune']['metric']} after {result['finetune']['strategy']}")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def _finite(value):
    """NaN and infinities become None: selection.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def check(cfg) -> None:
    """What would fail after the first candidate, refused before any: no candidates, and with ``select.finetune``
    the metric names. Raises ConfigError."""
    from hftl.config import ConfigError

    if cfg.task.name != "classification":  # LogME, kNN and LEEP here score one class label per input
        raise ConfigError(f"hftl select ranks backbones for task.name=classification (its scores read one class "
                          f"label per input), not task.name={cfg.task.name}: fine-tune the candidates with "
                          f"strategy.name=linear_probe and compare their test metrics instead")
    if not cfg.select.candidates:
        raise ConfigError("select.candidates is empty: list the backbones to rank, e.g. hftl select --candidates "
                          "sentence-transformers/all-MiniLM-L6-v2,path/to/model (or select.candidates=[a, b])")
    if cfg.select.finetune:
        from hftl.metrics import check_metrics

        check_metrics(cfg.eval.metrics, cfg.train.metric_for_best, trust_remote_code=cfg.model.trust_remote_code)


def main(cfg) -> dict:
    """Rank ``cfg.select.candidates`` on ``cfg.data`` (see the module docstring); returns what selection.json holds."""
    import hftl
    from hftl.rundir import claim

    check(cfg)
    accelerator = hftl.make_accelerator(cfg.train)
    run = claim(cfg, accelerator)  # before any model or data: output_dir is this run's, one writer
    try:
        return _main(cfg, accelerator, run)
    finally:
        run.release()


def _main(cfg, accelerator, run) -> dict:
    import hftl
    from hftl.config import ConfigError, save_config

    start = time.perf_counter()
    hftl.set_seed(cfg.train.seed)
    splits = hftl.load_splits(cfg.data)
    labels = hftl.label_names(splits)
    rows = [score_candidate(cfg, name, splits, labels, accelerator) for name in cfg.select.candidates]
    if not any("scores" in r for r in rows):
        raise ConfigError(f"none of the {len(rows)} select.candidates could be scored ("
                          + "; ".join(f"{r['name']}: {r['error']}" for r in rows)
                          + "): fix or replace them in select.candidates")
    result = {"data": {"name": cfg.data.name, "train_examples": len(splits["train"]), "classes": labels},
              "knn_k": cfg.select.knn_k, "candidates": rows, "ranking": rankings(rows),
              "seconds": {"selection": time.perf_counter() - start}}
    if cfg.select.finetune:
        from hftl.tasks import get_task

        t0 = time.perf_counter()  # the metric auto resolves to, as the fine-tuning recipe resolves it on these splits
        best = get_task("classification").best_metric(cfg, splits, accelerator.print)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, metric_for_best=best))
        for i, row in enumerate(r for r in rows if "scores" in r):
            row["finetune"] = finetune_candidate(cfg, row["name"], Path(cfg.output_dir) / "finetune" /
                                                 f"{i}-{slug(row['name'])}")
        result["seconds"]["finetune"] = time.perf_counter() - t0
        result["finetune"] = {"strategy": cfg.select.finetune, "metric": cfg.train.metric_for_best, "split": "test"}
        measured = [r.get("finetune", {}).get("measured") for r in rows]
        result["kendall_tau"] = {s: kendall([r["scores"][s] if "scores" in r else None for r in rows], measured)
                                 for s in SCORES}
    result["seconds"]["total"] = time.perf_counter() - start
    result = _finite(result)
    accelerator.print(table(result))
    if accelerator.is_main_process:
        with run.final_save() as stage:  # moved into place whole, then marked complete
            save_config(cfg, stage / "config.yaml")
            (stage / "selection.json").write_text(json.dumps(result, indent=2, allow_nan=False))
            if cfg.select.finetune:
                plot_selection(result, stage / "selection.png")
        accelerator.print(f"selection written to {cfg.output_dir}/selection.json")
    return result
