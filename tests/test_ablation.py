"""The ablation script end to end on a small data root: variants train, score on the baselines' rows, and
the table accumulates across runs."""

import dataclasses
import json

import pytest

from pingllm_core.data import records
from pingllm_core.experiments import ablation
from pingllm_core.model.recipe import Recipe
from tests.helpers.splits import make_split

PROBES = [(1, 1, 400), (2, 1, 300), (3, 2, 300), (4, 1, 200)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    (root / "splits").mkdir()
    cfg = records.RecordsConfig()
    for name, seed in (("train", 0), ("heldout_probes", 1), ("future", 2)):
        make_split(root / "splits" / f"{name}.parquet", seed=seed, probes=PROBES)
        if name != "future":
            records.write_probe_records(root / "splits" / f"{name}.parquet", root / "records" / name, cfg)
    return root


def test_variant_configs_apply_the_reference_then_the_change():
    model, loader, train = ablation.VARIANTS["shuffle_none"].configs(ablation.REFERENCE)
    assert loader.field_shuffle_share == 0.0  # the change
    assert loader.src_remap_share == ablation.REFERENCE.loader["src_remap_share"]  # the rest of the reference
    assert train.steps == ablation.REFERENCE.train["steps"] and train.rtt_loss_weight == 4.0
    assert model.role_embedding and model.max_len == loader.seq_len
    _, _, tr = ablation.VARIANTS["steps_x2"].configs(ablation.REFERENCE)
    assert tr.steps == 2 * train.steps
    # The `trained_model` variant is the asset's recipe, but for its progress lines and checkpoints.
    model, loader, train = ablation.VARIANTS["trained_model"].configs(ablation.REFERENCE)
    assert (model, loader, dataclasses.replace(train, log_every=120, ckpt_every=600)) == Recipe().configs()


@pytest.mark.slow
def test_runs_variants_and_keeps_earlier_results(data_root, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--data-root", str(data_root), "--out", str(out), "--rows", "6", "--steps", "3"]
    first = ablation.main([*args, "--variants", "reference,no_roles"])
    assert [r["variant"] for r in first] == ["reference", "no_roles"]
    for r in first:
        assert r["steps"] == 3 and r["marginal_rtt_loss"] > 0 and r["eval_rtt_loss"] > 0
        for key in ("heldout_probes/k0", "heldout_probes/k10", "future/k0", "future/k10"):
            assert 0 <= r[key] < float("inf"), (key, r[key])  # an untrained model's errors are large
    assert first[1]["params"] < first[0]["params"]  # no role embedding table
    # A later run of one variant adds its row; the table keeps the registry's order.
    second = ablation.main([*args, "--variants", "shuffle_none"])
    assert [r["variant"] for r in second] == ["reference", "no_roles", "shuffle_none"]
    saved = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in saved["results"]] == ["reference", "no_roles", "shuffle_none"]
    assert set(saved["baselines"]) == {"heldout_probes", "future"}
    table = (out / "table.md").read_text()
    assert "| shuffle_none |" in table and "| split | global_median |" in table
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --fresh starts over.
    assert [r["variant"] for r in ablation.main([*args, "--variants", "no_roles", "--fresh"])] == ["no_roles"]


def test_unknown_variant_is_one_line(data_root, tmp_path):
    with pytest.raises(SystemExit, match="unknown variant 'wide'; choose from reference"):
        ablation.main(["--data-root", str(data_root), "--out", str(tmp_path), "--variants", "wide"])
