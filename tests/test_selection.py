"""hftl select: LogME against a direct maximisation of the evidence, kNN and LEEP on hand-worked cases, properties
with hypothesis, and the command end to end on tiny models (a failing candidate named, the feature cache shared with
linear_probe, strict JSON, the run-directory rules)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hftl import cli
from hftl.selection import kendall, knn_accuracy, leep, logme, slug


def evidence_by_search(f: np.ndarray, y: np.ndarray) -> float:
    """LogME computed another way: log N(t | 0, I/beta + F F^T / alpha) (the marginal likelihood written out, as a
    dense Gaussian), maximised over log alpha and log beta by scipy's optimizer from several starts."""
    from scipy.optimize import minimize
    from scipy.stats import multivariate_normal

    n = len(f)
    gram = f @ f.T
    values = []
    for c in np.unique(y):
        t = (y == c).astype(float)

        def negative(p, t=t):
            cov = np.eye(n) / math.exp(p[1]) + gram / math.exp(p[0])
            return -multivariate_normal(np.zeros(n), cov, allow_singular=False).logpdf(t)

        best = min((minimize(negative, start, method="Nelder-Mead",
                             options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 4000})
                    for start in ([0.0, 0.0], [3.0, 1.0], [-3.0, 2.0])), key=lambda r: r.fun)
        values.append(-best.fun / n)
    return float(np.mean(values))


@pytest.mark.parametrize("n,d,classes,seed", [(30, 5, 2, 0), (40, 8, 3, 1), (12, 20, 2, 2), (4, 5, 2, 5)])
def test_logme_equals_a_direct_maximisation_of_the_evidence(n, d, classes, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    f = rng.normal(size=(n, d)) + 0.8 * rng.normal(size=(classes, d))[y]  # some signal, some noise
    assert logme(f, y) == pytest.approx(evidence_by_search(f, y), rel=1e-5, abs=1e-6)


def test_separated_features_score_higher_than_random_ones():
    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    separated = np.eye(4)[y] * 3 + 0.1 * rng.normal(size=(200, 4))
    random = rng.normal(size=(200, 4))
    assert logme(separated, y) > logme(random, y) + 1
    assert knn_accuracy(separated, y, k=5) == 1.0
    assert knn_accuracy(random, y, k=5) < 0.5


def test_logme_refuses_bad_input():
    with pytest.raises(ValueError, match="n >= 2"):
        logme(np.zeros((1, 3)), np.zeros(1))
    with pytest.raises(ValueError, match="NaN"):
        logme(np.array([[0.0], [math.nan]]), np.array([0, 1]))


problems = st.tuples(st.integers(4, 40), st.integers(1, 12), st.integers(2, 4), st.integers(0, 2**31 - 1))


def _problem(n, d, classes, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return rng.normal(size=(n, d)) + rng.normal(size=(classes, d))[y], y, rng


@settings(max_examples=40, deadline=None)
@given(problems, st.floats(0.01, 100))
def test_logme_is_finite_and_invariant_to_order_labels_and_scale(problem, scale):
    f, y, rng = _problem(*problem)
    value = logme(f, y)
    assert math.isfinite(value)
    order = rng.permutation(len(y))
    assert logme(f[order], y[order]) == pytest.approx(value, rel=1e-6, abs=1e-8)
    renamed = (y + 1) % (y.max() + 1)  # the same partition, other class ids
    assert logme(f, renamed) == pytest.approx(value, rel=1e-6, abs=1e-8)
    # scaling the features is absorbed by the prior precision alpha: the maximised evidence does not change
    assert logme(f * scale, y) == pytest.approx(value, rel=1e-5, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(problems, st.integers(1, 10))
def test_knn_accuracy_is_a_fraction_and_ignores_order(problem, k):
    f, y, rng = _problem(*problem)
    value = knn_accuracy(f, y, k=k, chunk=7)  # several chunks: the diagonal masked in each
    assert 0.0 <= value <= 1.0
    if f.shape[1] > 1:  # in one dimension every cosine is +-1: ties, broken by order
        order = rng.permutation(len(y))
        assert knn_accuracy(f[order], y[order], k=k) == pytest.approx(value)


def test_knn_leaves_each_example_out():
    f = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    assert knn_accuracy(f, np.array([0, 0, 1, 1]), k=1) == 1.0
    assert knn_accuracy(f, np.array([0, 1, 0, 1]), k=1) == 0.0  # its twin (not itself) is the other class


def test_leep_on_a_hand_worked_case():
    theta = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 1, 0])
    joint = np.array([[0.9 + 0.6, 0.1 + 0.4], [0.2, 0.8]]) / 3  # P(y, z): rows y, columns z
    cond = joint / joint.sum(0)
    expected = np.mean([math.log(cond[y_i] @ t) for y_i, t in zip(y, theta, strict=True)])
    assert leep(theta, y) == pytest.approx(expected)
    assert leep(np.eye(2)[[0, 1, 1, 0]], np.array([1, 0, 0, 1])) == pytest.approx(0.0)  # a relabelled source


@settings(max_examples=40, deadline=None)
@given(problems, st.integers(2, 6))
def test_leep_is_at_most_zero(problem, sources):
    n, _, classes, seed = problem
    rng = np.random.default_rng(seed)
    theta = rng.dirichlet(np.ones(sources), size=n)
    assert leep(theta, np.arange(n) % classes) <= 1e-12


def test_kendall_and_slug():
    assert kendall([1, 2, 3], [0.5, 0.6, 0.7]) == pytest.approx(1.0)
    assert kendall([1, None, 3], [0.7, 0.1, 0.5]) == pytest.approx(-1.0)  # the pair without None
    assert kendall([1, None, 3], [0.7, 0.1, None]) is None  # one candidate left
    assert kendall([1, 1, 1], [0.1, 0.2, 0.3]) is None  # constant: tau undefined
    assert slug("/tmp/x/../org/model") == "org--model"


def test_figure_names_tell_hftl_runs_apart(tmp_path, monkeypatch):
    """hftl runs all end in model/ (and masked stages in pretrained/): the figure names each point by as many last
    path parts as tell it from the others, not four points called "model"."""
    from matplotlib.axes import Axes

    from hftl.selection import plot_selection, short_names

    names = ["/r/fashion-3ep/model", "/r/fashion-1ep/model/", "sentence-transformers/all-MiniLM-L6-v2", "/r/random-4"]
    assert short_names(names) == ["fashion-3ep/model", "fashion-1ep/model", "all-MiniLM-L6-v2", "random-4"]
    assert short_names(["/a/" + "x" * 40]) == ["..." + "x" * 29]
    seen = []
    annotate = Axes.annotate
    monkeypatch.setattr(Axes, "annotate", lambda self, text, *a, **k: seen.append(text) or annotate(self, text, *a,
                                                                                                     **k))
    rows = [{"name": n, "scores": {"logme": i, "knn": 0.5, "leep": None}, "finetune": {"measured": 0.1 * i}}
            for i, n in enumerate(names)]
    plot_selection({"candidates": rows, "knn_k": 5, "kendall_tau": {"logme": 1.0, "knn": None, "leep": None},
                    "finetune": {"strategy": "linear_probe", "metric": "accuracy"}}, tmp_path / "s.png")
    assert seen[:4] == short_names(names) and (tmp_path / "s.png").stat().st_size > 1000


# --- the command, on tiny models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    """A tiny encoder, a different one, and one with a source classification head (3 source labels)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    from hftl.testing import tiny_text_model

    root = tmp_path_factory.mktemp("candidates")
    a, b = tiny_text_model(root / "a", seed=0), tiny_text_model(root / "b", seed=1)
    torch.manual_seed(2)
    config = AutoConfig.from_pretrained(a)
    config.num_labels, config.id2label = 3, {0: "x", 1: "y", 2: "z"}
    config.label2id = {"x": 0, "y": 1, "z": 2}
    BertForSequenceClassification(config).save_pretrained(root / "headed")
    AutoTokenizer.from_pretrained(a).save_pretrained(root / "headed")
    return a, b, str(root / "headed")


def _run(args, tmp_path, tiny_csv, *extra):
    return cli.main(["select", "--candidates", ",".join(args), f"data.name={tiny_csv}", "data.validation_size=0.2",
                     "data.test_size=0.2", "train.eval_batch_size=16", f"output_dir={tmp_path / 'sel'}", *extra])


def test_select_ranks_names_a_failing_candidate_and_writes_strict_json(candidates, tiny_csv, tmp_path, capsys):
    a, b, headed = candidates
    missing = str(tmp_path / "no-such-model")
    assert _run([a, missing, b, headed], tmp_path, tiny_csv) == 0
    out = capsys.readouterr().out
    assert f"{missing}: not scored" in out and "LEEP skipped: no source classification head" in out
    result = json.loads((tmp_path / "sel" / "selection.json").read_text(), parse_constant=pytest.fail)
    rows = {r["name"]: r for r in result["candidates"]}
    assert "error" in rows[missing] and "scores" not in rows[missing]
    assert sorted(result["ranking"]["logme"]) == sorted([a, b, headed])
    assert result["ranking"]["leep"] == [headed]  # the only one with a source head
    assert rows[headed]["scores"]["leep"] <= 0 and rows[a]["scores"]["leep"] is None
    assert "no source classification head" in rows[a]["cost"]["leep"]["skipped"]
    for name in (a, b, headed):
        cost = rows[name]["cost"]
        assert cost["features"]["examples"] == 72 and cost["features"]["seconds"] > 0  # the train split: 60%
        assert cost["logme"]["seconds"] >= 0 and cost["knn"]["k"] == 5
        assert math.isfinite(rows[name]["scores"]["logme"]) and 0 <= rows[name]["scores"]["knn"] <= 1
    assert (tmp_path / "sel" / "hftl_run.json").is_file() and (tmp_path / "sel" / "config.yaml").is_file()


def test_features_are_shared_with_linear_probe(candidates, tiny_csv, tmp_path, monkeypatch):
    """The probe of each candidate (--finetune linear_probe) finds its train features in the cache select filled:
    the backbone runs over the train split once per candidate, then over validation and test for the probe."""
    import hftl.features

    passes = []
    compute = hftl.features.compute_features

    def counting(*args, **kwargs):
        out = compute(*args, **kwargs)
        passes.append(len(out["labels"]))
        return out

    monkeypatch.setattr(hftl.features, "compute_features", counting)
    monkeypatch.setattr(hftl.features, "_MEMORY", {})  # features of the other tests, kept by this process
    a, b, _ = candidates
    assert _run([a, b], tmp_path, tiny_csv, "--finetune", "linear_probe", "train.epochs=3", "train.batch_size=8",
                "train.lr=0.03", "eval.baselines=false", "eval.report=false") == 0
    assert sorted(passes) == [24, 24, 24, 24, 72, 72]  # train once each (select), validation + test (probes)
    result = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert set(result["kendall_tau"]) == {"logme", "knn", "leep"} and result["kendall_tau"]["leep"] is None
    for row in result["candidates"]:
        assert 0 <= row["finetune"]["measured"] <= 1 and Path(row["finetune"]["output_dir"]).is_dir()
    assert result["seconds"]["finetune"] > 0 and (tmp_path / "sel" / "selection.png").stat().st_size > 1000


def test_bad_input_is_refused_before_compute(candidates, tiny_csv, tmp_path, capsys):
    a, _, _ = candidates
    assert cli.main(["select", f"output_dir={tmp_path / 'x'}"]) == 2
    assert "select.candidates is empty" in capsys.readouterr().err
    assert cli.main(["select", "--candidates", f"{a},{a}", f"output_dir={tmp_path / 'x'}"]) == 2
    assert "twice" in capsys.readouterr().err
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    assert _run([a], tmp_path, tiny_csv, f"output_dir={user}") == 2
    assert "hftl did not write" in capsys.readouterr().err and (user / "notes.txt").read_text() == "keep"
    assert _run([str(tmp_path / "gone1"), str(tmp_path / "gone2")], tmp_path, tiny_csv) == 2
    err = capsys.readouterr().err
    assert "none of the 2 select.candidates could be scored" in err and "gone2" in err


def test_select_refuses_tasks_its_scores_do_not_read(tmp_path):
    from hftl.config import ConfigError, load_config
    from hftl.selection import check

    cfg = load_config(None, ["task.name=regression", "select.candidates=[a, b]", f"output_dir={tmp_path / 's'}"])
    with pytest.raises(ConfigError, match="task.name=classification .* not task.name=regression"):
        check(cfg)


# --- images: ViTs as candidates ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision_candidates(tmp_path_factory):
    """Two classes of 16x16 images told apart by brightness (an image folder), and three tiny ViTs: random weights,
    the same shape trained a few steps on those classes and saved as an hftl model (a source head: 3 labels), and a
    ``ViTForImageClassification`` checkpoint (a transformers source head)."""
    import torch
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

    from hftl.modeling import HftlForClassification

    root = tmp_path_factory.mktemp("vision-select")
    rng = np.random.default_rng(0)
    for label, level in (("dark", 70), ("light", 185)):
        (root / "images" / label).mkdir(parents=True)
        for i in range(20):
            array = np.clip(rng.normal(level, 40, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(array).save(root / "images" / label / f"{i}.png")
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=16, patch_size=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    processor = ViTImageProcessorPil(size={"height": 16, "width": 16})
    torch.manual_seed(0)
    ViTModel(config, add_pooling_layer=False).save_pretrained(root / "random")
    torch.manual_seed(1)
    hftl_model = HftlForClassification.from_backbone(ViTModel(config, add_pooling_layer=False), 3, pooling="cls",
                                                      id2label={0: "a", 1: "b", 2: "c"})
    hftl_model.save_pretrained(root / "hftl-run")
    torch.manual_seed(2)
    headed = ViTForImageClassification(ViTConfig(**config.to_dict(), num_labels=4))
    headed.save_pretrained(root / "vit-headed")
    for name in ("random", "hftl-run", "vit-headed"):
        processor.save_pretrained(root / name)
    return str(root / "images"), [str(root / n) for n in ("random", "hftl-run", "vit-headed")]


def test_select_ranks_vits_on_an_image_folder(vision_candidates, tmp_path, capsys):
    """hftl select on images: every ViT scored on the same train images (no augmentation: the features are the
    cache's), LEEP for the two with a source head (an hftl model, a ViTForImageClassification), then linear probes
    and Kendall's tau."""
    images, names = vision_candidates
    assert cli.main(["select", "--candidates", ",".join(names), f"data.name={images}", "data.validation_size=0.2",
                     "data.test_size=0.2", "train.eval_batch_size=8", "--finetune", "linear_probe", "train.epochs=3",
                     "train.batch_size=8", "eval.baselines=false", "eval.report=false",
                     f"output_dir={tmp_path / 'sel'}"]) == 0
    result = json.loads((tmp_path / "sel" / "selection.json").read_text(), parse_constant=pytest.fail)
    rows = {r["name"]: r for r in result["candidates"]}
    assert set(rows) == set(names) and not any("error" in r for r in rows.values())
    for row in rows.values():
        assert row["cost"]["features"]["examples"] == 24 and row["cost"]["features"]["width"] == 16
        assert math.isfinite(row["scores"]["logme"]) and 0 <= row["scores"]["knn"] <= 1
        assert 0 <= row["finetune"]["measured"] <= 1
    random, hftl_run, headed = names
    assert rows[random]["scores"]["leep"] is None and "no source classification head" in capsys.readouterr().out
    assert rows[hftl_run]["scores"]["leep"] <= 0 and rows[headed]["scores"]["leep"] <= 0
    assert sorted(result["ranking"]["leep"]) == sorted([hftl_run, headed])
    assert set(result["kendall_tau"]) == {"logme", "knn", "leep"}
    assert (tmp_path / "sel" / "selection.png").stat().st_size > 1000
