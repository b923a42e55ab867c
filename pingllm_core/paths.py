"""Where every stage reads and writes, under one data root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ROOT_ENV = "PINGLLM_DATA_ROOT"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_data_root() -> Path:
    """The data root: $PINGLLM_DATA_ROOT, else `var/` in the project folder."""
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "var"


@dataclass(frozen=True)
class DataLayout:
    """The folder layout under a data root; every asset derives its paths from here."""

    root: Path

    @classmethod
    def default(cls) -> DataLayout:
        return cls(default_data_root())

    @property
    def raw(self) -> Path:  # <raw>/<YYYY-MM-DD>/ping-<YYYY-MM-DD>T<HH>00.bz2
        return self.root / "raw"

    @property
    def ground_truth(self) -> Path:  # synthetic internet's truth (npz), only for the embedded default
        return self.root / "synth" / "ground_truth.npz"

    @property
    def measurements(self) -> Path:
        """<measurements>/date=<YYYY-MM-DD>/part-<k>.parquet, k = 0..n-1 over the day's n dump files in hour
        order (k counts the files present, not the hour: a missing hour shifts the later ones down); a day
        without dump files is one empty part-0.parquet. See ingest.parse.part_paths."""
        return self.root / "parquet" / "measurements"

    @property
    def rejects(self) -> Path:  # <rejects>/date=<YYYY-MM-DD>.json: counts by reason + sample lines
        return self.root / "parquet" / "rejects"

    @property
    def splits(self) -> Path:  # <splits>/{sample,train,heldout_probes,future}.parquet
        return self.root / "splits"

    @property
    def records(self) -> Path:  # <records>/<split>/probes-XXXXX-of-YYYYY.array_record + index.parquet
        return self.root / "records"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def mlflow(self) -> Path:  # mlflow.db (SQLite backend) + artifacts/
        return self.root / "mlflow"

    @property
    def evaluation(self) -> Path:  # figures/*.png, metrics.json, report.md
        return self.root / "evaluation"

    @property
    def privacy(self) -> Path:  # membership_roc.png; mitigation.{md,json}, mitigation_roc.png (DP-SGD)
        return self.root / "privacy"

    @property
    def poisoning(self) -> Path:  # metrics.json, probe_scores.csv, poisoning.png
        # + splits/, records/, checkpoints/: the experiment's own poisoned and cleaned copies
        return self.root / "poisoning"

    @property
    def distill(self) -> Path:  # {distilled,scratch}/ (checkpoints), tiers.{png,md,json}
        return self.root / "distill"

    @property
    def catalog(self) -> Path:  # DuckDB: views over the Parquet outputs, parse rejects, eval metrics
        return self.root / "pingllm.duckdb"
