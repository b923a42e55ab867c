"""A real SIGKILL of a training process (mid-checkpoint) and an exact resume in a fresh process."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two training subprocesses: over a minute on 2 cores

REPO = Path(__file__).resolve().parents[1]
STEPS, CKPT_EVERY, HOLD_STEP = 16, 4, 12

# One training process. argv: ckpt_dir, loss_file, result_file, hold_step (0 = never hold).
# Every step's loss is appended (full precision, flushed) to loss_file by a tracker, since a killed
# process never returns its history. With hold_step > 0 the data iterator's get_state(), which Grain's
# orbax handler calls while the step is being written into its temporary folder, announces the save
# in <loss_file>.holding and then blocks, so the parent kills the process with a checkpoint in flight.
SCRIPT = textwrap.dedent(f"""
    import json, sys, time
    from pathlib import Path
    import grain
    from pingllm_core.model.transformer import model_config
    from pingllm_core.model.tracking import NullTracker
    from pingllm_core.model.train import TrainConfig, synthetic_batches, train

    ckpt_dir, loss_file, result_file, hold_step = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    batches = synthetic_batches({STEPS}, 4, 64, seed=0)

    def make_iter():
        it = iter(grain.MapDataset.source(batches).repeat().to_iter_dataset())
        if hold_step:
            get_state = it.get_state
            saves = []  # get_state is only called by checkpoint saves

            def holding_get_state():
                saves.append(1)
                if len(saves) * {CKPT_EVERY} == hold_step:
                    Path(str(loss_file) + ".holding").write_text(str(hold_step))
                    while True:
                        time.sleep(1)
                return get_state()

            it.get_state = holding_get_state
        return it

    class LossFile(NullTracker):
        def log_metrics(self, metrics, step):
            if "loss" in metrics:
                with open(loss_file, "a") as f:
                    f.write(json.dumps([step, metrics["loss"]]) + "\\n")

    cfg = TrainConfig(steps={STEPS}, lr=3e-3, warmup_steps=2, log_every=1, ckpt_every={CKPT_EVERY}, keep_checkpoints=3)
    r = train(model_config("tiny"), cfg, make_iter, Path(ckpt_dir), LossFile())
    Path(result_file).write_text(json.dumps({{"resumed_from": r.resumed_from, "step": r.step, "history": r.history}}))
""")


def _start(tmp_path: Path, name: str, ckpt_dir: Path, hold_step: int = 0) -> subprocess.Popen:
    script = tmp_path / "train_proc.py"
    if not script.exists():
        script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    args = [str(ckpt_dir), str(tmp_path / f"{name}.losses"), str(tmp_path / f"{name}.json"), str(hold_step)]
    with open(tmp_path / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, str(script), *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _wait(proc: subprocess.Popen, tmp_path: Path, name: str, timeout: float = 120) -> dict:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    return json.loads((tmp_path / f"{name}.json").read_text())


def _losses(tmp_path: Path, name: str) -> dict[int, float]:
    path = tmp_path / f"{name}.losses"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {int(s): float(loss) for s, loss in rows}


def test_sigkilled_run_mid_checkpoint_resumes_exactly(tmp_path):
    t0 = time.perf_counter()
    ref = _start(tmp_path, "ref", tmp_path / "ref_ckpt")  # uninterrupted, alongside the killed run
    ckpt = tmp_path / "ckpt"
    victim = _start(tmp_path, "killed", ckpt, hold_step=HOLD_STEP)
    holding = tmp_path / "killed.losses.holding"
    try:
        deadline = time.monotonic() + 120
        while not ((ckpt / "8").is_dir() and holding.exists()):
            assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached its step-12 save"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    killed = _losses(tmp_path, "killed")
    # It died while saving step 12 (a checkpoint step is reported after its save).
    assert sorted(killed) == list(range(1, HOLD_STEP))

    # The kill left finalized steps 4 and 8 and step 12's temporary folder (never renamed).
    names = sorted(p.name for p in ckpt.iterdir() if p.is_dir())
    assert names == ["12.orbax-checkpoint-tmp", "4", "8"], names

    resumed = _wait(_start(tmp_path, "resumed", ckpt), tmp_path, "resumed")
    want = _wait(ref, tmp_path, "ref")
    assert want["resumed_from"] is None and [s for s, _ in want["history"]] == list(range(1, STEPS + 1))
    full = {s: loss for s, loss in want["history"]}
    assert _losses(tmp_path, "ref") == full  # the loss file records what train() returns

    # The latest *finalized* step is restored, not the in-flight 12.
    assert resumed["resumed_from"] == 8 and resumed["step"] == STEPS
    got = {s: loss for s, loss in resumed["history"]}
    assert sorted(got) == list(range(9, STEPS + 1))
    # Distinct batches each step, so a wrong data position or optimizer state would change these.
    assert len({round(full[s], 4) for s in got}) == len(got)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [full[s] for s in sorted(got)], rtol=1e-6)
    # Before the kill the run matched the reference too (steps 9-11 are recomputed after the resume).
    np.testing.assert_allclose([killed[s] for s in killed], [full[s] for s in killed], rtol=1e-6)

    # The stale temporary folder was replaced by a real step 12; three newest steps kept.
    names = sorted((p.name for p in ckpt.iterdir() if p.is_dir()), key=int)
    assert names == ["8", "12", "16"], names
    print(f"kill/resume test took {time.perf_counter() - t0:.1f}s")
