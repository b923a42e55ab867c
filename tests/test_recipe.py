"""One config path per stage: the training recipe behind trained_model and the ablations, the sample size in
one asset's config, and the checkpoint folder that trained_model records for the stages after it."""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from pingllm_assets.data.measurements import SampleAssetConfig, SplitsAssetConfig
from pingllm_assets.definitions import defs
from pingllm_assets.model.train import RUN_NAME, TrainAssetConfig, trained_checkpoint
from pingllm_core.model.recipe import RECIPE_AUGMENTATION, RECIPE_RTT_LOSS_WEIGHT, Recipe
from pingllm_core.paths import DataLayout

RECIPES = Path(__file__).parents[1] / "pingllm_assets" / "recipes"


def test_the_asset_config_holds_every_recipe_knob_with_the_recipe_default():
    fields = TrainAssetConfig.model_fields
    assert set(Recipe.knobs()) <= set(fields)
    assert {k: fields[k].default for k in Recipe.knobs()} == {k: getattr(Recipe(), k) for k in Recipe.knobs()}
    model, loader, train = TrainAssetConfig().recipe().configs()
    assert (model.d_model, model.max_len, model.dropout) == (64, 256, 0.0)  # tiny, its own dropout
    assert (loader.seq_len, loader.batch_size, loader.seed, loader.workers) == (256, 8, 0, 0)
    assert {k: getattr(loader, k) for k in RECIPE_AUGMENTATION} == RECIPE_AUGMENTATION
    assert (train.steps, train.lr, train.warmup_steps, train.rtt_loss_weight) == (2400, 3e-3, 50, 4.0)
    assert (train.log_every, train.ckpt_every, train.eval_every, train.init_from) == (120, 600, 600, None)
    assert RECIPE_RTT_LOSS_WEIGHT == 4.0


def test_knobs_reach_their_config_and_overrides_come_last():
    model, loader, train = TrainAssetConfig(dropout=0.1, seq_len=512, loader_workers=2, seed=3, steps=8,
                                            init_from="ckpt").recipe().configs()  # fmt: skip
    assert (model.dropout, model.max_len, loader.workers, loader.seed, train.seed) == (0.1, 512, 2, 3, 3)
    assert (train.log_every, train.ckpt_every, train.init_from) == (1, 2, "ckpt")
    model, loader, train = Recipe(
        model={"n_layers": 4}, loader={"seq_len": 128}, train={"steps": 40}
    ).configs()
    assert (model.n_layers, model.max_len, train.steps, train.eval_every) == (4, 128, 40, 10)


def test_sample_rows_is_the_sample_assets_alone_and_the_recipes_validate():
    assert (
        "sample_rows" in SampleAssetConfig.model_fields
        and "sample_rows" not in SplitsAssetConfig.model_fields
    )
    graph = defs.resolve_asset_graph()
    for path in sorted(RECIPES.glob("*.yaml")):
        run_config = yaml.safe_load(path.read_text())
        selection = dg.AssetSelection.assets(*run_config["ops"], "splits")
        job = dg.define_asset_job("recipe", selection=selection).resolve(asset_graph=graph)
        dg.validate_run_config(job, run_config)
    with pytest.raises(dg.DagsterInvalidConfigError, match='unexpected config entry "sample_rows"'):
        dg.validate_run_config(job, {"ops": {"splits": {"config": {"sample_rows": 60_000}}}})


def test_later_stages_read_the_checkpoint_folder_trained_model_recorded(tmp_path):
    layout = DataLayout(tmp_path)
    with dg.instance_for_test() as instance:
        context = dg.build_asset_context(instance=instance)
        assert (
            trained_checkpoint(context, layout) == layout.checkpoints / "tiny"
        )  # no record: the default tier
        instance.report_runless_asset_event(
            dg.AssetMaterialization("trained_model", metadata={RUN_NAME: "long"})
        )
        assert trained_checkpoint(context, layout) == layout.checkpoints / "long"
        assert trained_checkpoint(context, layout, "other") == layout.checkpoints / "other"
