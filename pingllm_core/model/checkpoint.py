"""Orbax checkpoints: model state, optimizer state and the Grain iterator state saved together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grain
import grain.checkpoint as grain_ckpt
import jax
import orbax.checkpoint as ocp
from flax import nnx

from pingllm_core.model.transformer import ModelConfig, Transformer

MODEL_CONFIG_FILE = "model_config.json"
TRAIN_CONFIG_FILE = "train_config.json"


def make_manager(ckpt_dir: Path, keep: int) -> ocp.CheckpointManager:
    """A synchronous CheckpointManager keeping the newest `keep` steps (sync so a kill never loses a save)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=options)


def _is_grain(it: Any) -> bool:
    return isinstance(it, grain.DatasetIterator | grain.DataLoaderIterator)


def save_step(
    mgr: ocp.CheckpointManager, step: int, model_state, opt_state, data_iter: Any, meta: dict
) -> None:
    """Save one step: model and optimizer pytrees, the data iterator's state and loop metadata (JSON).

    Grain iterators go through Grain's own orbax handler (one state file per process, so multi-host
    resumes every host's stream); any other iterator with get_state()/set_state() is saved as JSON.
    """
    data = (
        grain_ckpt.CheckpointSave(data_iter)
        if _is_grain(data_iter)
        else ocp.args.JsonSave(data_iter.get_state())
    )
    args = ocp.args.Composite(
        model=ocp.args.StandardSave(model_state),
        opt=ocp.args.StandardSave(opt_state),
        data=data,
        meta=ocp.args.JsonSave(meta),
    )
    mgr.save(step, args=args, force=True)
    mgr.wait_until_finished()


def abstract_like(state, sharding: jax.sharding.Sharding):
    """ShapeDtypeStructs of a state pytree placed with `sharding` (the restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def restore_step(
    mgr: ocp.CheckpointManager, step: int, abstract_model, abstract_opt, data_iter: Any
) -> tuple[Any, Any, dict]:
    """Restore (model_state, opt_state, meta) of one step and set `data_iter` to the saved position."""
    data = grain_ckpt.CheckpointRestore(data_iter) if _is_grain(data_iter) else ocp.args.JsonRestore()
    args = ocp.args.Composite(
        model=ocp.args.StandardRestore(abstract_model),
        opt=ocp.args.StandardRestore(abstract_opt),
        data=data,
        meta=ocp.args.JsonRestore(),
    )
    out = mgr.restore(step, args=args)
    if not _is_grain(data_iter):
        data_iter.set_state(out.data)
    return out.model, out.opt, out.meta


def restore_latest(mgr: ocp.CheckpointManager, model_state, opt_state, it: Any):
    """Resume from the newest finalized step, if any: (model_state, opt_state, step or None)."""
    latest = mgr.latest_step()
    if latest is None:
        return model_state, opt_state, None
    sharding = jax.tree.leaves(model_state)[0].sharding
    model_state, opt_state, meta = restore_step(
        mgr, latest, abstract_like(model_state, sharding), abstract_like(opt_state, sharding), it
    )
    return model_state, opt_state, int(meta["step"])


def restore_model_state(ckpt_dir: Path, abstract_model, step: int | None = None) -> tuple[Any, int]:
    """Restore only the model state of a step (latest by default); returns (state, step)."""
    mgr = make_manager(ckpt_dir, keep=1_000_000)  # never deletes on read
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint steps in {ckpt_dir}")
    out = mgr.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_model)))
    return out.model, step


def write_json(path: Path, obj: dict) -> None:
    """Write a small JSON file atomically (rename) so a kill never leaves half a config."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def read_model_config(ckpt_dir: Path) -> ModelConfig:
    """The ModelConfig stored beside the checkpoints."""
    path = Path(ckpt_dir) / MODEL_CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a pingllm checkpoint folder")
    return ModelConfig.from_dict(json.loads(path.read_text()))


def load_checkpoint(ckpt_dir: Path, step: int | None = None) -> tuple[Transformer, ModelConfig, int]:
    """Load a trained model for inference (offline, no data, first local device); returns (model, cfg, step)."""
    cfg = read_model_config(ckpt_dir)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    state, step = restore_model_state(ckpt_dir, abstract_like(abstract_state, device), step)
    return nnx.merge(graphdef, state), cfg, step
