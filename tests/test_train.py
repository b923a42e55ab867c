"""Behaviour of the training loop: hook cadence, learning, exact resume, warm start, NaN stop, data parallel, loading."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import numpy as np
import pytest

from pingllm_core.model.checkpoint import load_checkpoint
from pingllm_core.model.loop import TrainLoop
from pingllm_core.model.tracking import ListTracker, NullTracker
from pingllm_core.model.train import TrainConfig, synthetic_batches, train
from pingllm_core.model.transformer import forward_jit, model_config

REPO = Path(__file__).resolve().parents[1]
CFG = model_config("tiny")
BATCHES = synthetic_batches(16, 4, 64, seed=0)


def _make_iter(batches=BATCHES):
    """A checkpointable Grain iterator over a repeating stream of synthetic batches."""
    return lambda: iter(grain.MapDataset.source(batches).repeat().to_iter_dataset())


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=12, lr=3e-3, warmup_steps=2, log_every=4, ckpt_every=4, seed=0)
    return TrainConfig(**{**base, **kw})


class Killed(Exception):
    pass


def test_tiny_model_learns_and_starts_at_uniform_loss(tmp_path):
    tracker = ListTracker()
    lines = []
    n = 60  # enough for > 1 nat with the recipe's model (its pair-recall embeddings start as noise on every token)
    result = train(
        CFG, _cfg(steps=n, ckpt_every=n), _make_iter(), tmp_path, tracker, BATCHES[:2], lines.append
    )
    losses = [loss for _, loss in result.history]
    assert [s for s, _ in result.history] == list(range(1, n + 1))
    assert losses[0] == pytest.approx(math.log(267), abs=0.15)
    assert np.mean(losses[-5:]) < losses[0] - 1.0
    assert result.eval_loss is not None and result.eval_loss < losses[0] - 1.0
    assert result.tokens_per_s > 0 and result.n_params == tracker.params["n_params"]
    assert lines[-1].startswith(f"step {n}/{n} loss ") and " tok/s " in lines[-1] and " ETA " in lines[-1]
    assert [s for s, _ in tracker.series("loss")] == list(range(4, n + 1, 4))
    assert tracker.series("eval_loss")[-1][1] == pytest.approx(result.eval_loss)
    # Synthetic batches hold no result field: its loss is reported as 0 over 0 tokens, not NaN.
    assert tracker.series("eval_rtt_loss")[-1][1] == result.eval_rtt_loss == 0.0
    assert "(rtt 0.000)" in lines[-1]
    assert json.loads((tmp_path / "model_config.json").read_text())["d_model"] == CFG.d_model
    assert json.loads((tmp_path / "train_config.json").read_text())["steps"] == n
    # The saved weights reproduce the final eval loss offline.
    model, cfg, step = load_checkpoint(tmp_path)
    assert (cfg, step) == (CFG, n)
    b = BATCHES[0]
    logits = np.asarray(forward_jit(model, b["tokens"], b["segment_ids"], b["positions"]))
    logp = logits[:, :-1] - np.log(np.exp(logits[:, :-1]).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, b["tokens"][:, 1:, None], -1)[..., 0]
    w = b["weights"][:, 1:]
    assert (nll * w).sum() / w.sum() < losses[0] - 1.0


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path):
    full = train(CFG, _cfg(), _make_iter(), tmp_path / "a", NullTracker())

    def kill_at_8(line: str) -> None:
        if line.startswith("step 8/"):
            raise Killed(line)

    with pytest.raises(Killed):
        train(CFG, _cfg(), _make_iter(), tmp_path / "b", NullTracker(), progress=kill_at_8)
    tracker = ListTracker()
    resumed = train(CFG, _cfg(), _make_iter(), tmp_path / "b", tracker)
    assert resumed.resumed_from == 8 and tracker.tags["resumed_from"] == "8"
    assert [s for s, _ in resumed.history] == [9, 10, 11, 12]
    want = [loss for s, loss in full.history if s > 8]
    got = [loss for _, loss in resumed.history]
    # Distinct batches each step: a wrong data position or optimizer state would change these losses.
    assert len({round(x, 4) for x in want}) == 4
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # A finished run is not retrained.
    again = train(CFG, _cfg(), _make_iter(), tmp_path / "b", NullTracker())
    assert again.resumed_from == 12 and again.history == []


def test_warm_start_from_another_checkpoint_uses_its_weights_and_a_new_schedule(tmp_path):
    first = train(CFG, _cfg(steps=50, ckpt_every=50), _make_iter(), tmp_path / "a", NullTracker())
    lines = []
    cont = _cfg(steps=6, init_from=str(tmp_path / "a"), lr=1e-3, warmup_steps=0, log_every=1)
    second = train(CFG, cont, _make_iter(), tmp_path / "b", NullTracker(), progress=lines.append)
    assert second.resumed_from is None and second.step == 6
    assert second.history[0][1] < first.history[0][1] - 1.0  # starts trained, not from ln V
    assert any("lr 1.0e-03" in line for line in lines if line.startswith("step 1/"))


def test_nan_loss_stops_with_the_step_and_saves_no_checkpoint(tmp_path):
    bad = [dict(b) for b in BATCHES[:4]]
    bad[2]["weights"] = np.full_like(bad[2]["weights"], np.nan)
    with pytest.raises(FloatingPointError, match="at step 3"):
        train(CFG, _cfg(ckpt_every=3), _make_iter(bad), tmp_path, NullTracker())
    assert not (tmp_path / "3").exists()


@pytest.mark.slow
def test_data_parallel_on_two_devices_matches_one_device(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys, grain
        from pathlib import Path
        import jax
        from pingllm_core.model.transformer import model_config
        from pingllm_core.model.tracking import NullTracker
        from pingllm_core.model.train import TrainConfig, synthetic_batches, train
        assert len(jax.devices()) == 2, jax.devices()
        batches = synthetic_batches(4, 4, 32)
        make = lambda: iter(grain.MapDataset.source(batches).repeat().to_iter_dataset())
        out = {{}}
        for n in (1, 2):
            cfg = TrainConfig(steps=3, lr=3e-3, warmup_steps=1, ckpt_every=3, num_devices=n)
            r = train(model_config("tiny"), cfg, make, Path({str(tmp_path)!r}) / str(n), NullTracker())
            out[n] = [loss for _, loss in r.history]
        print("RESULT", json.dumps(out))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    np.testing.assert_allclose(out["2"], out["1"], rtol=2e-3)


def test_loop_runs_hooks_on_their_steps_and_reads_late_only_where_no_state_is_needed():
    events = []

    def step_fn(state):
        events.append(("step", state + 1))
        return state + 1, {"loss": np.float32(0.5), "n": state + 1}

    loop = TrainLoop(step_fn, 7, read_late=True)
    loop.add_hook(lambda i: events.append(("save", i.step, i.state)), every=3, last=True, state=True)
    loop.add_hook(lambda i: events.append(("log", i.step, i.state)), every=2, last=True)
    assert loop.run(1, start=1) == 7 and loop.step == 7
    # Step s's hooks run after step s+1 is dispatched (state None), except where a state hook is due.
    assert events == [
        ("step", 2), ("step", 3), ("log", 2, None), ("save", 3, 3),
        ("step", 4), ("step", 5), ("log", 4, None),
        ("step", 6), ("save", 6, 6), ("log", 6, 6),
        ("step", 7), ("save", 7, 7), ("log", 7, 7),
    ]  # fmt: skip
    assert [(s, m["n"]) for s, m in loop.history] == [(s, s) for s in range(2, 8)]
    # A non-finite loss stops the run before any hook of its step (no checkpoint can persist it).
    saved = []
    loop = TrainLoop(
        lambda s: (s + 1, {"loss": np.nan if s + 1 == 3 else 1.0}), 5, name="x loss", nan_note="!"
    )
    loop.add_hook(saved.append, every=1, state=True)
    with pytest.raises(FloatingPointError, match=r"^x loss is nan at step 3!$"):
        loop.run(0)
    assert [i.step for i in saved] == [1, 2]


def test_invalid_train_config_is_rejected():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="ckpt_every"):
        TrainConfig(ckpt_every=0)


def test_rtt_loss_counts_exactly_the_rtt_bytes():
    import jax.numpy as jnp

    from pingllm_core.data import tokens as T
    from pingllm_core.evaluation.token_losses import rtt_marginal_loss
    from pingllm_core.model.step import rtt_byte_mask, xent_sums
    from pingllm_core.query.context import FIELD_ORDER, make_measurements

    m = make_measurements([1_700_000_000, 1_700_000_060, 1_700_000_120], ["192.0.2.1"] * 3,
                          ["198.51.100.7", "2001:db8::1", "198.51.100.7"], [12.5, -1.0, 250.0])  # fmt: skip
    toks = T.encode_measurements(m, np.ones(3, bool), np.tile(np.array(FIELD_ORDER, np.int8), (3, 1)))
    toks = toks[None].astype(np.int32)
    mask = np.asarray(rtt_byte_mask(jnp.asarray(toks)))[0]
    # Two RTTs of two bytes each (the failed one has none), right after their <RttStart>.
    starts = np.flatnonzero(toks[0] == T.RTT_START)
    assert len(starts) == 2 and np.array_equal(np.flatnonzero(mask), np.sort(np.r_[starts + 1, starts + 2]))
    batch = {"tokens": jnp.asarray(toks), "weights": jnp.ones(toks.shape, jnp.float32)}
    sums = xent_sums(jnp.zeros((1, toks.shape[1], T.VOCAB_SIZE)), batch)  # uniform predictions
    assert float(sums["rtt_weight"]) == 4
    assert float(sums["rtt_nll"]) == pytest.approx(4 * math.log(T.VOCAB_SIZE), rel=1e-6)
    # The pair-blind bar: byte 1 and byte 2 each get their own marginal over the two RTTs. Fitted on the
    # same batches without smoothing it is their entropy; fitted elsewhere it is a cross-entropy.
    one = [{"tokens": toks, "weights": np.ones(toks.shape, np.float32)}]
    h = rtt_marginal_loss(one, one, smoothing=0.0)
    per_slot = [2 * math.log(2) if toks[0, starts[0] + i] != toks[0, starts[1] + i] else 0.0 for i in (1, 2)]
    assert h == pytest.approx(sum(per_slot) / 4)
    assert per_slot[1] > 0  # 12.5 ms and 250 ms differ in byte 2 at least
    first = [
        {"tokens": toks[:, : starts[1]], "weights": np.ones((1, starts[1]), np.float32)}
    ]  # the 12.5 ms RTT
    fitted = rtt_marginal_loss(one, first, smoothing=1.0)
    # Each slot: the 12.5 ms byte has (1 + 1) / (1 + 267) of the mass, any other byte 1 / 268.
    p_hit, p_miss = 2 / 268, 1 / 268
    hits = [1 + (toks[0, starts[0] + i] == toks[0, starts[1] + i]) for i in (1, 2)]
    want = -sum(h_ * math.log(p_hit) + (2 - h_) * math.log(p_miss) for h_ in hits) / 4
    assert fitted == pytest.approx(want)


def test_rtt_loss_weight_changes_the_update_but_not_the_reported_losses():
    import jax

    from pingllm_core.data import tokens as T
    from pingllm_core.model.step import (
        init_states,
        lr_schedule,
        make_mesh,
        make_train_step,
        make_tx,
        put_batch,
    )

    m = T.Measurements.from_strings(np.arange(6) * 60 + 1_700_000_000, ["81.2.69.160"] * 6,
                                    ["8.8.8.8", "9.9.9.9"] * 3, np.array([12.0, 80.0] * 3))  # fmt: skip
    toks = T.encode_measurements(m, np.ones(6, bool), np.tile(np.array([0, 1, 3, 2], np.int8), (6, 1)))
    batch = {"tokens": toks[None], "segment_ids": np.ones((1, len(toks)), np.int32),
             "positions": np.arange(len(toks), dtype=np.int32)[None]}  # fmt: skip
    batch["weights"] = (batch["positions"] > 0).astype(np.float32)
    mesh = make_mesh(1)
    cfg = model_config("tiny", max_len=128)
    out = {}
    for w in (1.0, 5.0):
        tx = make_tx(lr_schedule(1e-2, 0, 10, 1.0), weight_decay=0.0, grad_clip=1e9, b1=0.9, b2=0.95)
        md, od, ms, os_ = init_states(cfg, tx, 0, mesh)
        (ms, _), metrics = make_train_step(md, od, mesh, rtt_weight=w)((ms, os_), put_batch(batch, mesh))
        out[w] = (jax.device_get(metrics), ms)
    (m1, s1), (m5, s5) = out[1.0], out[5.0]
    assert abs(float(m1["loss"]) - float(m5["loss"])) < 1e-6  # reported: the plain mean NLL both times
    assert abs(float(m1["rtt_loss"]) - float(m5["rtt_loss"])) < 1e-6
    from flax import nnx

    p1, p5 = (jax.tree.leaves(nnx.State(s).filter(nnx.Param)) for s in (s1, s5))
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(p1, p5, strict=True)) > 0
    # ... but the objective, so the update, differs


def test_rtt_byte_losses_split_the_rtt_loss_into_its_two_bytes():
    import jax.numpy as jnp

    from pingllm_core.data import tokens as T
    from pingllm_core.evaluation.token_losses import rtt_byte_losses, rtt_marginal_loss
    from pingllm_core.query.context import FIELD_ORDER, make_measurements

    m = make_measurements([1_700_000_000 + 60 * i for i in range(4)], ["192.0.2.1"] * 4,
                          ["198.51.100.7"] * 4, [12.5, 13.0, 250.0, 12.6])  # fmt: skip
    toks = T.encode_measurements(m, np.ones(4, bool), np.tile(np.array(FIELD_ORDER, np.int8), (4, 1)))
    n = len(toks)
    batch = {"tokens": toks[None].astype(np.int32), "weights": np.ones((1, n), np.float32),
             "segment_ids": np.ones((1, n), np.int32), "positions": np.arange(n, dtype=np.int32)[None]}  # fmt: skip

    def uniform(tokens, segment_ids, positions, deterministic):
        return jnp.zeros((*tokens.shape, T.VOCAB_SIZE))

    got = rtt_byte_losses(uniform, [batch], [batch], smoothing=0.0)
    assert got["rtt_byte1_loss"] == pytest.approx(math.log(T.VOCAB_SIZE))
    assert got["rtt_byte2_loss"] == pytest.approx(math.log(T.VOCAB_SIZE))
    # Byte 1 of 12.5, 12.6 and 13.0 ms is the same band: its entropy is that of {3 x band, 1 x 250 ms}.
    h1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert got["marginal_rtt_byte1_loss"] == pytest.approx(h1)
    assert got["marginal_rtt_byte2_loss"] > got["marginal_rtt_byte1_loss"]  # four different low bytes
    mean = (got["marginal_rtt_byte1_loss"] + got["marginal_rtt_byte2_loss"]) / 2
    assert mean == pytest.approx(rtt_marginal_loss([batch], [batch], smoothing=0.0))
