"""`tunesmith sweep CONFIG --trials N`: a hyperparameter search with Optuna over the config's
`sweep:` space (config/sweep.py), each trial a normal run. Layout:

  runs/<name>/study.db                 Optuna's study (SQLite): run the same command again to resume
  runs/<name>/trials/trial-K/          a complete run directory per trial
  runs/<name>/best.yaml                the best trial's config, ready for `tunesmith train`
  runs/<name>/sweep.json               every trial: parameters, state, score, steps
  runs/<name>/report.{html,md,json}    the finished trials side by side, parameter importance

A trial is scored on `sweep.metric` (its kept best with output.keep_best on that metric, else its
last evaluation) and pruned by Optuna's pruner at each evaluation when it falls behind the earlier
trials. A sweep stopped or killed mid-trial resumes with that trial: the same parameters, the same
run directory, from its last checkpoint; finished trials are never run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import warnings
from pathlib import Path

from rich.console import Console

from tunesmith import atomic
from tunesmith.config import RunConfig, set_key, validate_config
from tunesmith.config.sweep import SweepParam
from tunesmith.engine.checkpoint import list_checkpoints
from tunesmith.engine.logbook import read_metrics
from tunesmith.engine.watched_score import lower_is_better
from tunesmith.errors import RunFailed, UserError
from tunesmith.forgetting.reference import BaseReference
from tunesmith.model.resolve import resolve
from tunesmith.report.build import write_report
from tunesmith.run import train, validate_inputs
from tunesmith.runtime.precision import inference_dtype


def trial_config(cfg: RunConfig, params: dict, name: str) -> RunConfig:
    """The run config of one trial: the sweep's config with the trial's values, under <sweep>/trials."""
    tree = cfg.model_dump(mode="json")
    tree["sweep"], tree["compare"] = None, {"variants": {}}
    for key, value in params.items():
        set_key(tree, key, value, f"sweep.{key}")
    tree["name"] = name
    tree["output"]["dir"] = str(cfg.run_dir() / "trials")
    return validate_config(tree, f"sweep trial {name} ({', '.join(f'{k}={v}' for k, v in params.items())})")


def _corners(params: dict[str, SweepParam]) -> list[dict]:
    """Values at the edges of the space: every one must make a valid run config."""
    lows, highs = {}, {}
    for key, p in params.items():
        values = list(p.choice or []) if p.kind == "choice" else list(getattr(p, p.kind))
        lows[key], highs[key] = values[0], values[-1]
        for v in values if p.kind == "choice" else []:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise UserError(f"sweep.{key}: choice values are numbers, strings, booleans or null; got {v!r}")
    return [lows, highs]


def _suggest(trial, key: str, p: SweepParam):
    if p.kind == "log_uniform" and p.log_uniform is not None:
        return trial.suggest_float(key, *p.log_uniform, log=True)
    if p.kind == "uniform" and p.uniform is not None:
        return trial.suggest_float(key, *p.uniform)
    if p.kind == "int_uniform" and p.int_uniform is not None:
        return trial.suggest_int(key, *p.int_uniform)
    return trial.suggest_categorical(key, p.choice)


def _score(summary: dict, run_dir: Path, metric: str) -> float:
    best = summary.get("best") or {}
    if best.get("metric") == metric:
        return float(best["value"])
    values = [r[metric] for r in read_metrics(run_dir / "metrics.jsonl") if metric in r]
    if not values:
        raise UserError(
            f"sweep.metric {metric}: the trial logged no such score (it has "
            f"{', '.join(sorted({k for r in read_metrics(run_dir / 'metrics.jsonl') for k in r if k[:4] == 'val_'}))})"
        )
    return float(values[-1])


def _study(cfg: RunConfig, path: Path, space: dict):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = cfg.sweep
    assert s is not None  # a sweep's config has its section
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }[s.pruner]()
    study = optuna.create_study(
        study_name=cfg.name,
        storage=f"sqlite:///{path}",
        load_if_exists=True,
        pruner=pruner,
        direction="minimize" if lower_is_better(s.metric) else "maximize",
    )
    # seeded past the trials already in the study: a resumed sweep draws new points, not the first ones again
    seed = s.seed + len(study.trials)
    study.sampler = (
        optuna.samplers.TPESampler(seed=seed) if s.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    )
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", space)
    elif recorded != space:
        raise UserError(
            f"{path}: this study searched another space (sweep: {recorded}); "
            "give the sweep a new name (--set name=...) or restore its sweep: section"
        )
    return study


@contextlib.contextmanager
def _only_sweep(out_dir: Path):
    """One process per study: a second one would take the first one's running trial for an interrupted one."""
    with open(out_dir / "sweep.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out_dir}: another tunesmith sweep is running this study") from None
        yield


def _requeue_interrupted(study) -> None:
    """Trials a killed sweep left running: closed as failed (interrupted), and queued again with the
    same parameters and run directory, so the next one continues from its checkpoint."""
    from optuna.trial import TrialState

    interrupted = set(study.user_attrs.get("interrupted", []))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        interrupted.add(t.number)
        study.set_user_attr("interrupted", sorted(interrupted))
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(
            t.params, user_attrs={"run_name": t.user_attrs.get("run_name", f"trial-{t.number}")}, skip_if_exists=False
        )


def _done(study) -> int:
    from optuna.trial import TrialState

    interrupted = set(study.user_attrs.get("interrupted", []))
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.number not in interrupted)
    )


def run_sweep(
    cfg: RunConfig, trials: int, *, source: str = "config", console: Console | None = None, quiet: bool = False
) -> dict:
    import optuna
    from optuna.trial import TrialState

    console = console or Console(stderr=True, soft_wrap=True)
    if cfg.sweep is None or not cfg.sweep.params:
        raise UserError(
            f"{source}: sweep: give the search space, e.g. sweep: {{train.lr: {{log_uniform: [1.0e-5, 1.0e-3]}}}}"
        )
    for corner in _corners(cfg.sweep.params):  # a bad key or value fails now, not at trial 7
        validate_inputs(trial_config(cfg, corner, "check"))
    out_dir = cfg.run_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    space = {k: v.model_dump(mode="json", exclude_none=True) for k, v in cfg.sweep.params.items()}
    metric = cfg.sweep.metric
    with _only_sweep(out_dir):
        study = _study(cfg, out_dir / "study.db", space)
        _requeue_interrupted(study)
        base = BaseReference(resolve(cfg.model), inference_dtype(cfg.train.precision))
        while _done(study) < trials:
            trial = study.ask()
            params = {key: _suggest(trial, key, p) for key, p in cfg.sweep.params.items()}
            name = trial.user_attrs.get("run_name") or f"trial-{trial.number}"
            trial.set_user_attr("run_name", name)
            tcfg = trial_config(cfg, params, name)
            run_dir = tcfg.run_dir()
            resume = run_dir.exists() and bool(list_checkpoints(run_dir / "checkpoints"))
            if run_dir.exists() and not resume:
                shutil.rmtree(run_dir)  # an interrupted trial that saved no checkpoint starts again
            console.print(
                f"[bold]{name}[/bold] ({_done(study) + 1} of {trials}): "
                + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
                + (" (resumed)" if resume else "")
            )

            def report(step: int, record: dict, trial=trial) -> None:
                if metric in record:
                    trial.report(float(record[metric]), step)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"{metric} {record[metric]:.4g} at step {step}")

            try:
                summary = train(tcfg, resume=resume, console=console, quiet=quiet, base=base, on_record=report)
            except optuna.TrialPruned as e:
                study.tell(trial, state=TrialState.PRUNED)
                console.print(f"{name}: pruned ({e})")
                continue
            except RunFailed as e:
                trial.set_user_attr("error", str(e))
                study.tell(trial, state=TrialState.FAIL)
                console.print(f"[yellow]{name}: failed: {e}[/yellow]")
                continue
            value = _score(summary, run_dir, metric)
            trial.set_user_attr("steps", summary["steps"])
            study.tell(trial, value)
            console.print(f"{name}: {metric} {value:.4g}")
        return _finish(cfg, study, out_dir)


def _finish(cfg: RunConfig, study, out_dir: Path) -> dict:
    from optuna.trial import TrialState

    rows, interrupted = [], set(study.user_attrs.get("interrupted", []))
    for t in study.get_trials(deepcopy=False):
        if t.number in interrupted:
            continue  # its run went on in the trial queued for it
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append(
            {
                "trial": t.number,
                "run": t.user_attrs.get("run_name"),
                "state": t.state.name.lower(),
                "value": t.value,
                "params": t.params,
                "steps": t.user_attrs.get("steps", last),
                "error": t.user_attrs.get("error"),
            }
        )
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    assert cfg.sweep is not None  # a sweep's config has its section
    result = {
        "name": cfg.name,
        "metric": cfg.sweep.metric,
        "direction": study.direction.name.lower(),
        "sampler": cfg.sweep.sampler,
        "pruner": cfg.sweep.pruner,
        "space": study.user_attrs["space"],
        "trials": rows,
        "best": None,
        "importance": {},
    }
    plots = {}
    if complete:
        best = study.best_trial
        best_cfg = trial_config(cfg, best.params, f"{cfg.name}-best")
        tree = best_cfg.model_dump(mode="json")
        tree["output"]["dir"] = cfg.output.dir
        best_path = out_dir / "best.yaml"
        atomic.write_text(best_path, validate_config(tree, "best trial").to_yaml())
        result["best"] = {
            "trial": best.number,
            "run": best.user_attrs["run_name"],
            "value": best.value,
            "params": best.params,
            "config": str(best_path),
        }
        result["importance"], plot = _importance(study, out_dir / "plots" / "sweep-importance.png")
        if plot:
            plots["importance"] = plot
    atomic.write_text(out_dir / "sweep.json", json.dumps(result, indent=2))
    runs = [(t.user_attrs["run_name"], out_dir / "trials" / t.user_attrs["run_name"]) for t in complete]
    result["report"] = str(
        write_report(
            out_dir,
            runs,
            baselines_dir=None,
            primary=cfg.eval.primary,
            title=f"tunesmith sweep: {cfg.name}",
            sweep=result,
            extra_plots=plots,
        )
    )
    return result


def _importance(study, path: Path) -> tuple[dict, Path | None]:
    """Optuna's parameter importances (fANOVA) and their plot; none before two finished trials that differ."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({json.dumps(t.params, sort_keys=True) for t in complete}) < 2:
        return {}, None
    importance = optuna.importance.get_param_importances(study)
    from matplotlib.figure import Figure
    from optuna.visualization.matplotlib import plot_param_importances

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend of Optuna's plots is marked experimental
        axes = plot_param_importances(study)
    figure = axes.figure
    assert isinstance(figure, Figure)  # the plot's own figure, not a subfigure
    with atomic.replacing(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return {k: float(v) for k, v in importance.items()}, path
