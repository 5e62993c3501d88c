"""report_to: mlflow, through MLflow's client: a local SQLite store in the run directory unless
MLFLOW_TRACKING_URI names another. A resumed run continues the same MLflow run (found by its
`tunesmith.run_dir` tag); MLflow keeps every value, so steps logged between the last checkpoint and
an interruption appear twice there (its charts draw both)."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from tunesmith.engine.trackers.common import RunInfo, finals, flat_config, scalars

if TYPE_CHECKING:
    from pathlib import Path

_TAG = "tunesmith.run_dir"


class MLflow:
    def __init__(self, run: RunInfo) -> None:
        # an unreachable server: MLflow's default retries stall ~4 minutes before failing; a few seconds here
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # (after its import sets it) store setup logs at INFO
        logging.getLogger("alembic").setLevel(logging.WARNING)

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        local = (run.run_dir / "mlflow.db").resolve()
        self.client = MlflowClient(tracking_uri=uri or f"sqlite:///{local}")
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "tunesmith"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(
                name, artifact_location=None if uri else (run.run_dir / "mlflow-artifacts").resolve().as_uri()
            )
        )
        where = str(run.run_dir.resolve())
        earlier = (
            self.client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{_TAG}` = '{where}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if run.resume_step
            else []
        )
        if earlier:
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run.name, tags={_TAG: where}).info.run_id
            params = [Param(k, v[:6000]) for k, v in flat_config(run.config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
                self.client.log_batch(self.run_id, params=params[i : i + 100])
            self.client.log_text(self.run_id, run.config_yaml, "config.yaml")

    def _metrics(self, named: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in named.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log(self, record: dict[str, Any]) -> None:
        self._metrics(scalars(record), int(record["step"]))

    def finish(self, results: dict[str, Any], step: int, files: list[Path]) -> None:
        self._metrics(finals(results), step)
        for f in files:
            self.client.log_artifact(self.run_id, str(f), artifact_path=None if f.parent.name != "plots" else "plots")
        self.client.set_terminated(self.run_id, "FINISHED")

    def abort(self) -> None:
        self.client.set_terminated(self.run_id, "KILLED")
