"""The training run: build everything from the config, meta-train, evaluate, log, checkpoint.

Read top to bottom: `build` instantiates task, model, optimizer and algorithm; `train` runs the
meta-iterations with periodic evaluation and checkpoints; the final meta-test figures go to
summary.json.
"""
import json
import math
import time
from functools import partial
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm import tqdm

from metarun import checkpoint
from metarun.algos import SelfEvaluating
from metarun.checkpoint import atomic_write
from metarun.config import ConfigError, DataError, resolve_device, validate
from metarun.evaluate import evaluate, summarize
from metarun.loggers import Loggers
from metarun.tasks import KnowsOptimum, MultiAgentTaskFamily, RLTaskFamily


class NonFiniteLoss(RuntimeError):
    pass


def build(cfg):
    """Task family, model, outer optimizer and algorithm for `cfg`, seeded."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.get("device", "cpu"))
    torch.manual_seed(cfg.seed)
    task = _instantiate(cfg.task, device=device)
    # Sizes only a multi-agent task knows (agents, state) fill the model config keys that ask for them.
    sizes = {k: v for k, v in task.model_sizes().items() if k in cfg.model} if isinstance(task, MultiAgentTaskFamily) else {}
    # The model is initialised on the CPU from the seeded global generator, then moved: a seed
    # gives the same initial weights on every device.
    model = _instantiate(cfg.model, input_shape=task.input_shape, output_dim=task.output_dim, **sizes).to(device)
    optimizer = _instantiate(cfg.optim)(model.parameters())
    algo = _instantiate(cfg.algo, model=model, optimizer=optimizer, task=task, _recursive_=False)
    if isinstance(task, MultiAgentTaskFamily) and not isinstance(algo, SelfEvaluating):
        raise ConfigError("algo", cfg.algo._target_.rsplit(".", 1)[-1], "qmix or kaleidoscope_qmix for particle_world; matd3 or kaleidoscope_matd3 for mamujoco")
    if isinstance(task, RLTaskFamily) and not isinstance(algo, SelfEvaluating):
        raise ConfigError("algo", cfg.algo._target_.rsplit(".", 1)[-1], "maml_rl for RL tasks (navigation2d, half_cheetah_vel, half_cheetah_dir)")
    return task, model, optimizer, algo


def _instantiate(node, **kwargs):
    """Hydra's instantiate, but a user mistake raised by a constructor surfaces as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ConfigError, DataError)):
            raise e.__cause__ from None
        raise


def fingerprint(cfg):
    """The settings a resumed run must share with its checkpoint."""
    keep = ("algo", "task", "model", "optim", "seed", "meta_batch_size")
    plain = OmegaConf.to_container(cfg, resolve=True)
    return {k: json.dumps(plain[k], sort_keys=True) for k in keep}


def selection_metric(metrics):
    """The validation figure best.pt is chosen by, and its score (higher is better)."""
    for key in ("eval/accuracy", "eval/return"):
        if key in metrics:
            return key, metrics[key], metrics[key]
    return "eval/loss", metrics["eval/loss"], -metrics["eval/loss"]


def write_summary(run_dir, summary):
    atomic_write(Path(run_dir) / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))


def write_config(run_dir, cfg):
    """The resolved config in <run dir>/config.yaml: all that loading the run needs, however it was started."""
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    atomic_write(Path(run_dir) / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(plain, resolve=True).encode()))


def provenance(device):
    """What produced a run's figures: versions, device and, from a git checkout, the commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("metarun")
    except PackageNotFoundError:
        own = None
    commit = None
    try:  # a reviewer can check out exactly the code that made the figures; "+dirty" if it had edits
        import subprocess

        here = Path(__file__).resolve().parent
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            commit = head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {"metarun": own, "git_commit": commit, "torch": torch.__version__, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def rng_state(generator):
    state = {"task_rng": generator.get_state(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(generator, state):
    generator.set_state(state["task_rng"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def run(cfg, run_dir, group=None, name=None):
    """Meta-train according to `cfg`, writing into `run_dir`. Returns the summary dict."""
    wall_start = time.perf_counter()
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task, model, optimizer, algo = build(cfg)
    # Tasks are drawn from a CPU generator whatever the device, so a seed gives the same tasks anywhere.
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    start, train_time = 0, 0.0
    oracle = {}  # cumulative oracle calls, by the keys the algorithm reports
    best = None  # where best.pt came from: {"metric", "value", "score", "iteration"}
    if cfg.resume:
        state = checkpoint.load(ckpt_path)
        checkpoint.check_matches(ckpt_path, state, model, fingerprint(cfg))
        if "algo" not in state:
            raise DataError(f"checkpoint {ckpt_path} was written by an older metarun (format {state['format']}) without the "
                            "algorithm's state: it can be evaluated (mode=eval, load_learner) but not resumed exactly")
        model.load_state_dict(state["model"])
        algo.load_state_dict(state["algo"])
        set_rng_state(generator, state)
        start, train_time, oracle = state["iteration"], state["time"], dict(state["oracle"])
        if best_path.is_file():
            best = checkpoint.load(best_path)["best"]
    write_config(run_dir, cfg)

    print(f"metarun: writing to {run_dir}", flush=True)
    loggers = Loggers(cfg, run_dir, group, name, start if cfg.resume else None)
    summary = {"status": "running", "iteration": start, "run_dir": str(run_dir), "name": name, "group": group,
               "provenance": provenance(next(model.parameters()).device)}
    write_summary(run_dir, summary)

    def evaluation(split, prefix):
        # An algorithm with its own evaluation (RL: returns from fresh rollouts) provides `evaluate`.
        per_task = (algo.evaluate if isinstance(algo, SelfEvaluating) else partial(evaluate, algo, task))(
            split, cfg.eval_tasks, cfg.eval_steps, cfg.eval_seed, cfg.eval_chunk)
        return summarize(per_task, prefix)

    def validation(iteration):
        # Keep the parameters with the best validation figure in best.pt (test_checkpoint=best tests them).
        nonlocal best
        metrics = evaluation("val", "eval")
        key, value, score = selection_metric(metrics)
        if math.isfinite(score) and (best is None or score > best["score"]):
            best = {"metric": key, "value": value, "score": score, "iteration": iteration}
            checkpoint.save(best_path, {"iteration": iteration, "model": model.state_dict(), "algo": algo.state_dict(),
                                        "best": best, "config": fingerprint(cfg)})
        return metrics

    def save(iteration):
        checkpoint.save(ckpt_path, {
            "iteration": iteration, "time": train_time, "oracle": oracle,
            "model": model.state_dict(), "algo": algo.state_dict(), **rng_state(generator),
            "config": fingerprint(cfg),
        })

    def record(iteration, metrics):
        row = {"iteration": iteration, "time": round(train_time, 4), **metrics}
        row.update({f"oracle/{k}": v for k, v in oracle.items()})
        if isinstance(task, KnowsOptimum):
            row.update({f"train/{k}": v for k, v in task.metrics(model).items()})
        loggers.log(row)

    last_good = start if cfg.resume else None
    status = "failed"
    try:
        if start == 0:
            record(0, validation(0))
        bar = tqdm(range(start + 1, cfg.iterations + 1), initial=start, total=cfg.iterations,
                   disable=not cfg.progress, desc=cfg.algo._target_.split('.')[-1], dynamic_ncols=True,
                   mininterval=1.0)
        for it in bar:
            t0 = time.perf_counter()
            batch = task.sample(cfg.meta_batch_size, generator, "train")
            metrics = algo.step(batch)
            train_time += time.perf_counter() - t0
            if not all(math.isfinite(v) for v in metrics.values()):
                bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
                kept = f"the last good checkpoint ({ckpt_path}, iteration {last_good}) is kept" if last_good is not None else "no checkpoint was written yet"
                raise NonFiniteLoss(f"training stopped at iteration {it}: non-finite {bad}; lower optim.lr or algo.inner_lr; {kept}")
            for k, v in algo.oracle_calls(cfg.meta_batch_size).items():
                oracle[k] = oracle.get(k, 0) + v
            row = {f"train/{k}": v for k, v in metrics.items()}
            if it % cfg.eval_every == 0 or it == cfg.iterations:
                row.update(validation(it))
                record(it, row)
            elif it % cfg.log_every == 0:
                record(it, row)
            if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
                save(it)
                last_good = it
            # Validation figures as val_<name>, so they do not overwrite the training ones of the same name.
            bar.set_postfix({k.replace("train/", "").replace("eval/", "val_"): f"{v:.4g}" for k, v in row.items()
                             if k in ("train/loss", "train/accuracy", "train/return", "eval/loss", "eval/accuracy", "eval/return")},
                            refresh=False)
        bar.close()
        tested, tested_file = cfg.iterations, ckpt_path.name
        if cfg.test_checkpoint == "best" and best is not None:
            state = checkpoint.load(best_path)
            model.load_state_dict(state["model"])
            algo.load_state_dict(state["algo"])
            tested, tested_file = best["iteration"], best_path.name
            print(f"metarun: testing best.pt (iteration {tested}, {best['metric']} {best['value']:.4g})", flush=True)
        final = evaluation("test", "test")
        summary.update(final, status="completed", iteration=cfg.iterations, tested_iteration=tested,
                       tested_checkpoint=tested_file, test_steps=cfg.eval_steps, time=train_time,
                       wall_time=time.perf_counter() - wall_start,  # this process's, evaluations included
                       threads=torch.get_num_threads(),  # what the times above were measured with
                       **{f"oracle/{k}": v for k, v in oracle.items()})
        status = "completed"
        return summary
    except NonFiniteLoss as e:
        summary.update(status="failed", error=str(e))
        raise
    except KeyboardInterrupt:
        summary.update(status="interrupted", error="interrupted by the user; continue with resume=true")
        raise
    except Exception as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        write_summary(run_dir, summary)
        loggers.finish(summary if status == "completed" else {"status": summary["status"]})
